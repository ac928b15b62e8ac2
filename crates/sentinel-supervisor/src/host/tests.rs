//! The host's arithmetic on fixed hosts, its detection against the kernel's own lists, and the
//! CPU signature from captured `/proc/cpuinfo` texts.

use super::*;

fn quota(cores: f64) -> Option<CpuQuota> {
    Some(CpuQuota {
        cores,
        source: QuotaSource::CgroupV2,
    })
}

#[test]
fn cpu_max_parsing() {
    assert_eq!(parse_cpu_max("max 100000\n"), None);
    assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
    assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
    assert_eq!(parse_cpu_max("garbage"), None);
}

#[test]
fn affinity_and_quota_bound_what_this_process_may_use() {
    let pinned = Host {
        online_cpus: 8,
        affinity_cpus: 2,
        last_allowed_cpu: Some(1),
        quota: None,
    };
    assert_eq!(pinned.allowed_cpus(), 2);
    assert_eq!(pinned.allowed_cores(), 2.0);
    assert!(pinned.limit_reason().contains("affinity mask, 8 online"));
    let capped = Host {
        online_cpus: 8,
        affinity_cpus: 8,
        last_allowed_cpu: Some(7),
        quota: quota(1.5),
    };
    assert_eq!(capped.allowed_cpus(), 2);
    assert_eq!(capped.allowed_cores(), 1.5);
    assert!(capped
        .limit_reason()
        .contains("cgroup quota 1.50 cores, cgroup v2 cpu.max"));
    // A quota above the affinity mask does not raise it.
    let both = Host {
        online_cpus: 8,
        affinity_cpus: 2,
        last_allowed_cpu: Some(1),
        quota: quota(4.0),
    };
    assert_eq!((both.allowed_cpus(), both.allowed_cores()), (2, 2.0));
}

#[test]
fn a_machine_share_is_cores_of_every_online_cpu() {
    let pinned = Host {
        online_cpus: 8,
        affinity_cpus: 2,
        last_allowed_cpu: Some(1),
        quota: None,
    };
    assert_eq!(pinned.machine_share_to_cores(0.25), 2.0);
    assert_eq!(pinned.machine_share_to_cores(1.5), 8.0);
    assert_eq!(Host::unrestricted(2).machine_share_to_cores(0.5), 1.0);
}

#[test]
fn detection_agrees_with_the_kernel() {
    let h = Host::detect();
    #[cfg(target_os = "linux")]
    {
        let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .unwrap()
            .unwrap() as usize;
        assert_eq!(h.online_cpus, online);
    }
    assert!((1..=h.online_cpus).contains(&h.affinity_cpus), "{h:?}");
    // The standard library reads the same mask and quota (it rounds the quota up).
    let std_view = std::thread::available_parallelism().unwrap().get();
    assert_eq!(h.allowed_cpus(), std_view, "{h:?}");
}

const SAPPHIRE_RAPIDS: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse4_1 sse4_2 avx f16c fma avx2 bmi2 avx512f avx512bw avx512vl avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n";
const EPYC: &str = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx f16c fma avx2 bmi1 bmi2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vnni\n";
const GRAVITON: &str = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd4f\n";

#[test]
fn cpu_signature_from_captured_cpuinfo() {
    let spr = CpuSignature::from_cpuinfo("x86_64", SAPPHIRE_RAPIDS);
    assert_eq!(spr.model, "Intel(R) Xeon(R) Platinum 8480+");
    assert!(spr.has("amx_tile") && spr.has("amx_int8") && spr.has("amx_bf16"));
    assert!(!spr.has("sse4_1"), "only the flags that matter are kept");
    // The list's order, not the file's: the same CPU gives the same key.
    assert_eq!(
        spr.flags[..3],
        ["sse4_2".to_string(), "avx".into(), "avx2".into()]
    );
    let epyc = CpuSignature::from_cpuinfo("x86_64", EPYC);
    assert_eq!(epyc.model, "AMD EPYC");
    assert!(epyc.has("avx512f") && epyc.has("avx512_vnni") && !epyc.has("amx_tile"));
    assert!(!epyc.has("bmi1") && !epyc.has("avx512dq"));
    let arm = CpuSignature::from_cpuinfo("aarch64", GRAVITON);
    assert_eq!(arm.model, "implementer 0x41 part 0xd4f");
    assert_eq!(arm.flags, ["asimd", "asimddp", "sve", "sve2", "i8mm"]);
    assert!(arm.describe().contains("aarch64: asimd"));
}

#[test]
fn cpu_signature_keys_differ_by_model_and_flags() {
    let spr = CpuSignature::from_cpuinfo("x86_64", SAPPHIRE_RAPIDS);
    let epyc = CpuSignature::from_cpuinfo("x86_64", EPYC);
    assert_eq!(spr.key().len(), 12);
    assert_eq!(
        spr.key(),
        CpuSignature::from_cpuinfo("x86_64", SAPPHIRE_RAPIDS).key()
    );
    assert_ne!(spr.key(), epyc.key());
    let mut no_amx = spr.clone();
    no_amx.flags.retain(|f| !f.starts_with("amx"));
    assert_ne!(spr.key(), no_amx.key(), "a VM hiding AMX is another host");
    let mut renamed = epyc.clone();
    renamed.model = "AMD EPYC 9654".into();
    assert_ne!(epyc.key(), renamed.key());
}

#[test]
fn this_hosts_signature_is_stable() {
    let a = CpuSignature::detect();
    assert_eq!(a.arch, std::env::consts::ARCH);
    assert_eq!(a.key(), CpuSignature::detect().key());
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    assert!(!a.model.is_empty() && a.has("sse4_2"), "{a:?}");
}

/// The CPUs of a kernel CPU list such as `0-3,6,8-9`.
#[cfg(target_os = "linux")]
fn cpu_list(list: &str) -> std::collections::BTreeSet<usize> {
    list.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .flat_map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn host_detection_agrees_with_the_kernels_lists() {
    assert_eq!(cpu_list("0-3,6,8-9").len(), 7);
    let h = Host::detect();
    // Second sources: the online list in sysfs and this process's allowed list in /proc
    // (sched_getaffinity reports the allowed CPUs that are online).
    let online = cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = cpu_list(
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap(),
    );
    assert_eq!(h.online_cpus, online.len());
    assert_eq!(h.affinity_cpus, allowed.intersection(&online).count());
    assert_eq!(
        h.last_allowed_cpu,
        allowed.intersection(&online).last().copied()
    );
    assert!(h.affinity_cpus <= h.online_cpus);
    assert!((1..=h.affinity_cpus).contains(&h.allowed_cpus()));
    assert!(h.allowed_cores() <= h.affinity_cpus as f64);
}

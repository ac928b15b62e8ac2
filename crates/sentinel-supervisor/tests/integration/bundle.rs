//! Bundles, through the real binary: `bundle --server-dir` with the fake backend as llama-server;
//! `install`/`setup --from` into an empty cache with nothing on `PATH` (no compiler, cmake or
//! Python), twice, then `run` against that cache; a corrupted and an incomplete bundle refused
//! with the file (and the hashes) named, nothing installed.

use crate::support::{fake, Options, Supervisor, BIN};
use sentinel_supervisor::backend::bundle::{self, Manifest};
use sentinel_supervisor::backend::pin::SourcePin;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

/// One bundle for every test here (it packs the 100+ MB debug binary): its archive and the
/// directory holding it.
fn shared_bundle() -> &'static (PathBuf, tempfile::TempDir) {
    static BUNDLE: OnceLock<(PathBuf, tempfile::TempDir)> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("server");
        std::fs::create_dir_all(&server).unwrap();
        std::fs::copy(fake(), server.join("llama-server")).unwrap();
        let cfg = config(dir.path(), &dir.path().join("cache"));
        let out = Command::new(BIN)
            .args(["bundle", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(dir.path().join("out"))
            .arg("--server-dir")
            .arg(&server)
            .output()
            .unwrap();
        assert!(out.status.success(), "bundle failed: {}", text(&out));
        let archive = dir.path().join("out").join(bundle::archive_name());
        assert!(
            text(&out).contains(&archive.display().to_string()),
            "{}",
            text(&out)
        );
        (archive, dir)
    })
}

fn config(dir: &Path, cache: &Path) -> PathBuf {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!("[backend]\ncache_dir = \"{}\"\n", cache.display()),
    )
    .unwrap();
    cfg
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `sentinel-supervisor <args> --config <cache's config> --model fake.gguf` with an empty `PATH`.
fn without_tools(args: &[&str], from: &Path, dir: &Path, cache: &Path) -> Output {
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let model = dir.join("fake.gguf");
    std::fs::write(&model, b"GGUF fake model for tests").unwrap();
    Command::new(BIN)
        .args(args)
        .arg(from)
        .arg("--config")
        .arg(config(dir, cache))
        .arg("--model")
        .arg(&model)
        .env("PATH", &empty)
        .env_remove("CC")
        .env_remove("CXX")
        .output()
        .unwrap()
}

/// The shared bundle extracted into `dir/x`; returns its top directory.
fn extracted(dir: &Path) -> PathBuf {
    let (archive, _) = shared_bundle();
    let file = std::fs::File::open(archive).unwrap();
    let dest = dir.join("x");
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&dest)
        .unwrap();
    let top = std::fs::read_dir(&dest).unwrap().next().unwrap().unwrap();
    top.path()
}

fn portable_rung(cache: &Path) -> PathBuf {
    bundle::portable_dir(cache, &SourcePin::builtin())
}

#[test]
fn a_bundle_installs_without_a_compiler_twice_and_serves() {
    let (archive, _) = shared_bundle();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");

    let first = without_tools(&["install"], archive, dir.path(), &cache);
    assert!(first.status.success(), "install failed: {}", text(&first));
    let server = portable_rung(&cache).join("build/bin/llama-server");
    let out = text(&first);
    assert!(
        out.contains(&format!("bundle: installed: {}", server.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("llama-server: {}", server.display())),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&server).unwrap(),
        std::fs::read(fake()).unwrap()
    );
    let stamp = std::fs::read_to_string(portable_rung(&cache).join("BUILD-OK")).unwrap();
    assert!(stamp.contains("installed from a bundle"), "{stamp}");

    // The same bundle again, as `setup --from`: verified, left as it is.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = mtime(&server);
    let second = without_tools(&["setup", "--from"], archive, dir.path(), &cache);
    assert!(
        second.status.success(),
        "second install failed: {}",
        text(&second)
    );
    assert!(
        text(&second).contains("bundle: already installed"),
        "{}",
        text(&second)
    );
    assert_eq!(mtime(&server), before);

    // `run` against that cache, with nothing on PATH, finds the installed llama-server.
    let s = Supervisor::start(Options {
        fake: true,
        backend_from_cache: true,
        config: &format!("[backend]\ncache_dir = \"{}\"\n", cache.display()),
        env: vec![("PATH", dir.path().join("empty-path").display().to_string())],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(30));
    let (code, body) = s.post(
        "/v1/chat/completions",
        serde_json::json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}),
    );
    assert_eq!(code, 200, "{body}\n{}", s.logs());
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
}

#[test]
fn a_corrupted_bundle_is_refused_with_the_file_and_hashes_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = extracted(dir.path());
    let manifest = Manifest::parse(
        &std::fs::read_to_string(root.join("manifest.json")).unwrap(),
        &root,
    )
    .unwrap();
    let victim = root.join("llama.cpp/llama-server");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let actual = sentinel_supervisor::backend::fetch::sha256_reader(
        std::fs::File::open(&victim).unwrap(),
        &victim,
    )
    .unwrap();
    let expected = &manifest.file("llama.cpp/llama-server").unwrap().sha256;

    let cache = dir.path().join("cache");
    let out = without_tools(&["setup", "--from"], &root, dir.path(), &cache);
    assert!(!out.status.success());
    let e = text(&out);
    assert!(e.contains("corrupted"), "{e}");
    assert!(e.contains("llama.cpp/llama-server"), "{e}");
    assert!(e.contains(expected.as_str()) && e.contains(&actual), "{e}");
    assert!(!portable_rung(&cache).exists(), "nothing installed");
}

#[test]
fn an_incomplete_bundle_is_refused_with_the_missing_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = extracted(dir.path());
    std::fs::remove_file(root.join("llama.cpp/llama-server")).unwrap();
    let cache = dir.path().join("cache");
    let out = without_tools(&["install"], &root, dir.path(), &cache);
    assert!(!out.status.success());
    let e = text(&out);
    assert!(e.contains("incomplete"), "{e}");
    assert!(e.contains("llama.cpp/llama-server"), "{e}");
    assert!(!portable_rung(&cache).exists(), "nothing installed");

    // A truncated archive: refused, nothing installed, no scratch left in the cache.
    let (archive, _) = shared_bundle();
    let bytes = std::fs::read(archive).unwrap();
    let cut = dir.path().join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = without_tools(&["install"], &cut, dir.path(), &cache);
    assert!(!out.status.success());
    let e = text(&out);
    assert!(e.contains("damaged or truncated"), "{e}");
    assert!(!portable_rung(&cache).exists());
    let left: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".bundle-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_binary_beside_its_bundle_installs_it_on_first_setup() {
    let dir = tempfile::tempdir().unwrap();
    let root = extracted(dir.path());
    let cache = dir.path().join("cache");
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let model = dir.path().join("fake.gguf");
    std::fs::write(&model, b"GGUF fake model for tests").unwrap();
    // Through a symlink, as /usr/bin/sentinel-supervisor is in the .deb.
    let link = dir.path().join("sentinel-supervisor");
    std::os::unix::fs::symlink(root.join("sentinel-supervisor"), &link).unwrap();
    let setup = || {
        Command::new(&link)
            .arg("setup")
            .arg("--config")
            .arg(config(dir.path(), &cache))
            .arg("--model")
            .arg(&model)
            .env("PATH", &empty)
            .output()
            .unwrap()
    };
    let out = setup();
    assert!(out.status.success(), "{}", text(&out));
    let server = portable_rung(&cache).join("build/bin/llama-server");
    assert!(
        text(&out).contains(&format!("llama-server: {}", server.display())),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("installing the llama-server packaged beside this binary"),
        "{}",
        text(&out)
    );
    // The next setup takes the installed rung without looking at the bundle again.
    let again = setup();
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        !text(&again).contains("packaged beside"),
        "{}",
        text(&again)
    );
}

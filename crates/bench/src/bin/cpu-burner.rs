//! A CPU-burning test program: `cpu-burner [--threads N] [--idle-threads M] [--wake-after W]
//! [--seconds S]` keeps N threads busy (the main thread is one of them) for S seconds (forever
//! without `--seconds`), next to M threads that only sleep (like a server's HTTP and logging
//! threads), so the process has exactly N + M threads. With `--wake-after W` the M sleeping
//! threads start computing too after W seconds (a program whose idle thread joins the work).
//! Used by the governor's tests and benchmark.

use std::hint::black_box;
use std::time::{Duration, Instant};

fn main() {
    let mut threads = 1usize;
    let mut seconds: Option<f64> = None;
    let mut idle = 0usize;
    let mut wake: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value.as_deref().map(str::parse::<f64>)) {
            ("--threads", Some(Ok(n))) if n >= 1.0 => threads = n as usize,
            ("--seconds", Some(Ok(s))) if s >= 0.0 => seconds = Some(s),
            ("--idle-threads", Some(Ok(n))) if n >= 0.0 => idle = n as usize,
            ("--wake-after", Some(Ok(w))) if w >= 0.0 => wake = Some(w),
            _ => {
                eprintln!(
                    "usage: cpu-burner [--threads N] [--idle-threads M] [--wake-after W] [--seconds S]"
                );
                std::process::exit(2);
            }
        }
    }
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    for _ in 0..idle {
        std::thread::spawn(move || match wake {
            Some(w) => {
                std::thread::sleep(Duration::from_secs_f64(w));
                burn(deadline);
            }
            None => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
        });
    }
    let workers: Vec<_> = (1..threads)
        .map(|_| std::thread::spawn(move || burn(deadline)))
        .collect();
    burn(deadline);
    for w in workers {
        let _ = w.join();
    }
}

fn burn(deadline: Option<Instant>) {
    let mut x = 0u64;
    loop {
        for _ in 0..100_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
    }
}

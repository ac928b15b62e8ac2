//! A CPU-burning test program: `cpu-burner [--threads N] [--seconds S]` keeps N threads busy
//! (the main thread is one of them, so the process has exactly N threads) for S seconds
//! (forever without `--seconds`). Used by the governor's tests and benchmark.

use std::hint::black_box;
use std::time::{Duration, Instant};

fn main() {
    let mut threads = 1usize;
    let mut seconds: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value.as_deref().map(str::parse::<f64>)) {
            ("--threads", Some(Ok(n))) if n >= 1.0 => threads = n as usize,
            ("--seconds", Some(Ok(s))) if s >= 0.0 => seconds = Some(s),
            _ => {
                eprintln!("usage: cpu-burner [--threads N] [--seconds S]");
                std::process::exit(2);
            }
        }
    }
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
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

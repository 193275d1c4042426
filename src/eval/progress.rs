//! Progress of an evaluation on stderr: an indicatif bar on a terminal, otherwise a plain
//! line every 10% (and at the end), so CI logs stay readable.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    total: u64,
    done: u64,
    failed: u64,
    bar: Option<ProgressBar>,
    next_line: u64,
}

impl Progress {
    /// Progress over `total` calls, `already` of them done by an earlier run.
    pub fn new(total: u64, already: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed} < {eta}]") {
                bar.set_style(style);
            }
            bar.set_position(already);
            bar
        });
        Progress { total, done: already, failed: 0, bar, next_line: already + step(total) }
    }

    pub fn advance(&mut self, failed: bool) {
        self.done += 1;
        self.failed += u64::from(failed);
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if self.failed > 0 {
                    bar.set_message(format!("{} failed", self.failed));
                }
            }
            None if self.done >= self.next_line || self.done == self.total => {
                eprintln!("eval: {}/{} done, {} failed", self.done, self.total, self.failed);
                self.next_line = self.done + step(self.total);
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn step(total: u64) -> u64 {
    (total / 10).max(1)
}

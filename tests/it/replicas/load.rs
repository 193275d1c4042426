//! Client load for the replicas tests: bursts that count statuses, and a steady mix of JSON
//! and streamed chat requests that runs in the background and counts every answer that was
//! not a complete success.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One request's whole life, streams included; far above any healthy answer here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A background load stops by itself after this, whatever the test does.
const LOAD_CAP: Duration = Duration::from_secs(120);
/// Pause between two requests of one steady-load worker: steady, not saturating.
const STEADY_PAUSE: Duration = Duration::from_millis(20);

/// A client that opens a connection per request: a request never races the load balancer
/// closing an idle keep-alive connection, so every failure counted is a real one.
pub fn client() -> reqwest::Client {
    crate::support::init();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("reqwest client")
}

pub fn chat_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "stream": stream})
}

/// Sends `total` copies of `body` to `url` with at most `concurrency` in flight; returns
/// each status (0 for a transport error) and how long the burst took.
pub async fn burst(url: &str, key: &str, body: &Value, total: usize, concurrency: usize) -> (Vec<u16>, Duration) {
    let client = client();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<JoinHandle<Vec<u16>>> = (0..concurrency)
        .map(|_| {
            let (client, url, key, body, next) =
                (client.clone(), url.to_owned(), key.to_owned(), body.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < total {
                    let sent =
                        client.post(format!("{url}/chat/completions")).bearer_auth(&key).json(&body).send().await;
                    statuses.push(match sent {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    });
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(total);
    for worker in workers {
        statuses.extend(worker.await.expect("burst worker"));
    }
    (statuses, started.elapsed())
}

/// Requests of a steady load that ended well or not.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    pub streams: usize,
    pub failures: Vec<String>,
}

/// A steady load running until [`Steady::finish`].
pub struct Steady {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
    started: Instant,
}

impl Steady {
    /// `workers` loops, each sending chat requests to `url` with `key`, every other one
    /// streamed, every fourth one to the `cached` model with a new prompt.
    pub fn start(url: &str, key: &str, workers: usize) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let client = client();
        let workers = (0..workers)
            .map(|worker| {
                let (client, url, key, stop) = (client.clone(), url.to_owned(), key.to_owned(), Arc::clone(&stop));
                tokio::spawn(async move { run_worker(&client, &url, &key, worker, &stop).await })
            })
            .collect();
        Steady { stop, workers, started: Instant::now() }
    }

    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for worker in self.workers {
            let tally = worker.await.expect("load worker");
            total.ok += tally.ok;
            total.streams += tally.streams;
            total.failures.extend(tally.failures);
        }
        eprintln!(
            "steady load: {} answered in full ({} streamed), {} failed, over {:?}",
            total.ok,
            total.streams,
            total.failures.len(),
            self.started.elapsed()
        );
        total
    }
}

async fn run_worker(client: &reqwest::Client, url: &str, key: &str, worker: usize, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_CAP {
        let stream = n % 2 == 1;
        let body = if n % 4 == 0 {
            chat_body("cached", &format!("steady {worker} {n} {:?}", started.elapsed()), stream)
        } else {
            chat_body("chat", &format!("steady load from worker {worker}"), stream)
        };
        match one(client, url, key, &body, stream).await {
            Ok(()) => {
                tally.ok += 1;
                tally.streams += usize::from(stream);
            }
            Err(failure) => {
                tally.failures.push(format!("{:?} worker {worker} request {n}: {failure}", started.elapsed()))
            }
        }
        n += 1;
        tokio::time::sleep(STEADY_PAUSE).await;
    }
    tally
}

/// One request, successful only if it is a 200 with a whole answer: a JSON body with
/// choices, or a stream that ends with `data: [DONE]`.
async fn one(client: &reqwest::Client, url: &str, key: &str, body: &Value, stream: bool) -> Result<(), String> {
    let response = client
        .post(format!("{url}/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .map_err(|err| format!("transport: {err}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|err| format!("{status}, body cut: {err}"))?;
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let whole = if stream {
        text.trim_end().ends_with("data: [DONE]")
    } else {
        serde_json::from_str::<Value>(&text).is_ok_and(|json| json["choices"][0]["message"].is_object())
    };
    if whole { Ok(()) } else { Err(format!("incomplete answer: {text:?}")) }
}

//! Log lines of the test process, captured as JSON objects by a global tracing subscriber (set
//! once per test binary), for tests that check what the proxy logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::faults::guarded;

/// Log lines of this test process as JSON objects (a global subscriber, set once).
pub fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || SharedWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until a captured log line contains every one of `needles`, and returns it.
pub async fn log_line(needles: &[&str]) -> serde_json::Value {
    let logs = logs();
    guarded(&format!("a log line with {needles:?}"), async {
        loop {
            let found = {
                let text = logs.lock().unwrap();
                String::from_utf8_lossy(&text)
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(|l| serde_json::from_str(l).unwrap())
            };
            if let Some(line) = found {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

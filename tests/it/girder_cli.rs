//! `cellpose-train-worker mock-girder` runs the mock standalone.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use super::helpers::bin;

#[tokio::test]
async fn mock_girder_subcommand_serves_the_api() {
    let mut child = bin().args(["mock-girder", "--port", "0"]).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).map(str::to_string);
    let result = async {
        let url = url.ok_or("no URL printed")?;
        let body: serde_json::Value = reqwest::get(format!("{url}/system/version"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(body)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(result.unwrap()["release"], "5.0.21", "{line}");
}

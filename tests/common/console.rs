//! Reading what operators see: the admin console's result sets and the
//! Prometheus endpoint.

use std::collections::HashMap;
use std::io::{Read, Write};
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

/// The rows of a simple query, each as column name -> text value (NULL
/// as "").
pub async fn rows(client: &Client, sql: &str) -> Vec<HashMap<String, String>> {
    simple_rows(client, sql)
        .await
        .iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_owned(), row.get(i).unwrap_or("").to_owned()))
                .collect()
        })
        .collect()
}

async fn simple_rows(client: &Client, sql: &str) -> Vec<SimpleQueryRow> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect()
}

/// The values of the first row a simple query returns (NULL as "").
pub async fn first_row(client: &Client, sql: &str) -> Vec<String> {
    let rows = simple_rows(client, sql).await;
    let row = rows.first().unwrap_or_else(|| panic!("{sql}: no row"));
    (0..row.len())
        .map(|i| row.get(i).unwrap_or("").to_owned())
        .collect()
}

/// The body of http://127.0.0.1:PORT/metrics, or "" while it cannot be
/// had.
pub fn scrape(port: u16) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => String::new(),
    }
}

/// The sum of every sample of `name` whose labels include all of
/// `labels`; 0 when there is none.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `scrape` off the async runtime's threads.
pub async fn scrape_async(port: u16) -> String {
    tokio::task::spawn_blocking(move || scrape(port))
        .await
        .unwrap_or_default()
}

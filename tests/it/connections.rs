//! Client connections that send no request: the gateway closes a connection that sends nothing,
//! only part of the HTTP/2 preface, or the preface and then nothing, and still serves HTTP/1 and
//! HTTP/2 requests under the same short timeouts.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::fake_openai::sse_body;
use crate::common::{FakeOpenAi, Options, Reply, TestGateway};

/// Limit on each wait for the gateway to close a connection, so a test fails instead of hanging.
const SAFETY_NET: Duration = Duration::from_secs(20);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 SETTINGS frame with no settings: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn gateway_with_short_timeouts() -> (FakeOpenAi, TestGateway) {
    let provider = FakeOpenAi::start().await;
    let options = Options {
        http: "header_read_timeout_ms = 300\nhttp2_keep_alive_interval_ms = 300\n\
               http2_idle_timeout_ms = 1000",
        ..Options::default()
    };
    let gateway = TestGateway::start_with(&provider.base_url(), options).await;
    (provider, gateway)
}

/// Reads until the gateway closes the connection, by end of stream or reset, and returns what
/// it sent before that.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return received,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

#[tokio::test]
async fn silent_connection_is_closed() {
    let (_provider, gateway) = gateway_with_short_timeouts().await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();

    let received = tokio::time::timeout(SAFETY_NET, read_until_closed(&mut stream))
        .await
        .expect("the gateway closes a connection that sends no byte");
    assert!(received.is_empty(), "sent {received:?}");
}

#[tokio::test]
async fn partial_h2_preface_is_closed() {
    let (_provider, gateway) = gateway_with_short_timeouts().await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(&H2_PREFACE[..10]).await.unwrap();

    let received = tokio::time::timeout(SAFETY_NET, read_until_closed(&mut stream))
        .await
        .expect("the gateway closes a connection that stops inside the HTTP/2 preface");
    assert!(received.is_empty(), "sent {received:?}");
}

#[tokio::test]
async fn h2_preface_only_connection_is_closed() {
    let (_provider, gateway) = gateway_with_short_timeouts().await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    stream.write_all(EMPTY_SETTINGS).await.unwrap();

    let received = tokio::time::timeout(SAFETY_NET, read_until_closed(&mut stream))
        .await
        .expect("the gateway closes an HTTP/2 connection whose client answers no PING");
    // The first frame the gateway sends is its SETTINGS frame, so it took the connection for
    // HTTP/2 before it closed it.
    assert!(received.len() >= 9, "sent {received:?}");
    assert_eq!(received[3], 4, "first frame type");
}

#[tokio::test]
async fn http1_and_h2c_requests_are_served() {
    let (_provider, gateway) = gateway_with_short_timeouts().await;

    let http1 = gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(http1.status(), 200);
    assert_eq!(http1.version(), reqwest::Version::HTTP_11);

    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let http2 = h2c.get(gateway.url("/health")).send().await.unwrap();
    assert_eq!(http2.status(), 200);
    assert_eq!(http2.version(), reqwest::Version::HTTP_2);
}

/// The sending half of an HTTP/2 client connection, and the task that drives the connection.
/// The task ends when the gateway closes the connection, or when the sender is dropped.
type H2Client = (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
);

/// Opens an HTTP/2 connection to the gateway with prior knowledge. The client acknowledges every
/// PING the gateway sends.
async fn h2_client(gateway: &TestGateway) -> H2Client {
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(connection);
    (sender.ready().await.unwrap(), driver)
}

/// Sends `request` with `body` on `sender` and returns the status and the whole response body.
async fn h2_exchange(
    sender: &mut h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
    body: &'static str,
) -> (http::StatusCode, String) {
    let (response, mut upload) = sender.send_request(request, body.is_empty()).unwrap();
    if !body.is_empty() {
        upload.send_data(body.into(), true).unwrap();
    }
    let response = response.await.unwrap();
    let status = response.status();
    let mut stream = response.into_body();
    let mut received = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.unwrap();
        stream.flow_control().release_capacity(chunk.len()).unwrap();
        received.extend_from_slice(&chunk);
    }
    (status, String::from_utf8(received).unwrap())
}

fn health_request(gateway: &TestGateway) -> http::Request<()> {
    http::Request::get(gateway.url("/health")).body(()).unwrap()
}

#[tokio::test]
async fn idle_h2_connection_is_closed() {
    let (_provider, gateway) = gateway_with_short_timeouts().await;
    let (mut sender, driver) = h2_client(&gateway).await;
    let (status, _) = h2_exchange(&mut sender, health_request(&gateway), "").await;
    assert_eq!(status, 200);

    // The client keeps its sender, so only the 1 s idle timeout can end the connection.
    let ended = tokio::time::timeout(SAFETY_NET, driver).await;
    let result = ended
        .expect("the gateway closed the idle connection")
        .unwrap();
    assert!(
        result.is_ok(),
        "closed with GOAWAY, not an error: {result:?}"
    );
    drop(sender);
}

#[tokio::test]
async fn busy_h2_connection_stays_open() {
    let (_provider, gateway) = gateway_with_short_timeouts().await;
    let (mut sender, driver) = h2_client(&gateway).await;

    // A request every 300 ms for 2.4 s, more than twice the idle timeout, on one connection.
    for _ in 0..8 {
        let (status, _) = h2_exchange(&mut sender, health_request(&gateway), "").await;
        assert_eq!(status, 200);
        sender = sender.ready().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!driver.is_finished());
}

#[tokio::test]
async fn h2_stream_longer_than_idle_timeout_keeps_connection() {
    let (provider, gateway) = gateway_with_short_timeouts().await;
    // Two events 1.5 s apart: the reply streams for longer than the 1 s idle timeout.
    let events = sse_body(&["slow ", "reply"]);
    let cut = events.find("\n\n").unwrap() + 2;
    provider.push(Reply::Stream {
        pieces: vec![events[..cut].into(), events[cut..].into()],
        pause: Duration::from_millis(1500),
    });
    let (mut sender, driver) = h2_client(&gateway).await;

    let request = http::Request::post(gateway.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(())
        .unwrap();
    let message = r#"{"session_id":"s1","user_id":"u1","text":"hi"}"#;
    let (status, received) = h2_exchange(&mut sender, request, message).await;
    assert_eq!(status, 200);
    assert!(received.contains("event: done"), "{received}");

    // The stream counted as a request in flight, so the connection still takes requests.
    let mut sender = sender.ready().await.unwrap();
    let (status, _) = h2_exchange(&mut sender, health_request(&gateway), "").await;
    assert_eq!(status, 200);
    assert!(!driver.is_finished());
}

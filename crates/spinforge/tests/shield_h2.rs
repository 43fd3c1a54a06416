//! HTTP/2 limits through the real edge over h2c (prior knowledge): the
//! advertised stream limit. The client is the `h2` crate, speaking to a
//! server these tests start on 127.0.0.1.
//!
//! Limitation: the rapid-reset and header-list (CONTINUATION) limits are
//! handed to hyper but no test here shows them firing: the `h2` client
//! queues resets in ways that end the connection before the server's
//! pending-accept counter is reached (a raw-frame client would lift it).

mod common;
mod shield_support;

use common::*;
use shield_support::*;
use std::time::Duration;
use tokio::net::TcpStream;

const H2: &str = "[shield]\nh2_max_concurrent_streams = 7\n";

type Sender = h2::client::SendRequest<bytes::Bytes>;

async fn h2_connect(server: &Server) -> (Sender, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(server.edge).await.expect("connect");
    let (sender, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (sender, tokio::spawn(connection))
}

fn get_request(host: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("http://{host}/"))
        .body(())
        .expect("request")
}

#[tokio::test]
async fn http2_clients_are_told_the_stream_limit_and_served_within_it() {
    let server = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}{H2}"));
    server.create_admin_and_login();
    static_site(&server, "static.localhost");

    let (sender, _connection) = h2_connect(&server).await;
    let mut sender = sender.ready().await.expect("ready");
    let (response, _) = sender
        .send_request(get_request("static.localhost"), true)
        .expect("send");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answer in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    // The server's SETTINGS have arrived by now.
    assert_eq!(sender.current_max_send_streams(), 7);
}

//! HTTP/2 limits through the real edge over h2c (prior knowledge): the
//! advertised stream limit. The client is the `h2` crate, speaking to a
//! server these tests start on 127.0.0.1.
//!
//! The rapid-reset and CONTINUATION-flood limits are shown with frames
//! built by hand (the `h2` client will not send such abuse): the server
//! answers GOAWAY with ENHANCE_YOUR_CALM and closes, and keeps serving
//! other connections.

mod common;
mod shield_support;

use common::*;
use shield_support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

// ---- hand-built frames -------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const CANCEL: u32 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET of `/` at `host`, HPACK-coded without touching the dynamic
/// table (static-table indexes and one literal), so it can be repeated.
fn get_block(host: &str) -> Vec<u8> {
    // :method GET, :scheme http, :path /, then :authority as a literal
    // without indexing (name index 1).
    let mut block = vec![0x82, 0x86, 0x84, 0x01, host.len() as u8];
    block.extend_from_slice(host.as_bytes());
    block
}

/// Opens an h2c connection and sends the preface and empty SETTINGS.
async fn raw_h2(server: &Server) -> TcpStream {
    let mut tcp = TcpStream::connect(server.edge).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    tcp.write_all(&hello).await.expect("preface");
    tcp
}

/// Reads frames for at most 10 s: the GOAWAY's error code and debug
/// text if one arrives, and whether a PING ACK came before it.
async fn read_until_goaway(tcp: &mut TcpStream) -> (Option<(u32, String)>, bool) {
    let mut buf = Vec::new();
    let mut pinged = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            if kind == PING && flags & ACK != 0 {
                pinged = true;
                if payload == *b"bounded!" {
                    return (None, true);
                }
            }
            if kind == GOAWAY && payload.len() >= 8 {
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                return (Some((code, debug)), pinged);
            }
        }
        let mut chunk = [0u8; 16384];
        let read = tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (None, pinged),
        }
    }
}

/// Opens `n` streams and resets each at once, all in one write, then a
/// PING whose ACK tells that everything before it was read.
async fn open_and_reset(tcp: &mut TcpStream, n: u32) {
    let block = get_block("nobody.localhost");
    let mut burst = Vec::new();
    for i in 0..n {
        let stream = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    burst.extend(frame(PING, 0, 0, b"bounded!"));
    // The server may close before the end of the burst is written.
    let _ = tcp.write_all(&burst).await;
}

#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm_and_others_are_still_served() {
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[shield]\nh2_max_pending_reset_streams = 20\n"
    ));

    // Well under the limit: the connection lives (the PING is answered).
    let mut calm = raw_h2(&server).await;
    open_and_reset(&mut calm, 5).await;
    let (goaway, pinged) = read_until_goaway(&mut calm).await;
    assert_eq!(goaway, None, "5 resets must not end the connection");
    assert!(pinged, "the PING after 5 resets was answered");

    // 500 opened-and-reset streams in one burst: past the 20 resets the
    // server holds for streams it has not accepted yet.
    let mut abuse = raw_h2(&server).await;
    open_and_reset(&mut abuse, 500).await;
    let (goaway, _) = read_until_goaway(&mut abuse).await;
    let (code, debug) = goaway.expect("a GOAWAY for the rapid resets");
    assert_eq!(code, ENHANCE_YOUR_CALM, "{debug}");
    assert!(debug.contains("reset"), "{debug}");

    // Other clients are served meanwhile.
    let (sender, _connection) = h2_connect(&server).await;
    let mut sender = sender.ready().await.expect("ready");
    let (response, _) = sender
        .send_request(get_request("nobody.localhost"), true)
        .expect("send");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answer in time")
        .expect("response");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_continuation_flood_gets_goaway_enhance_your_calm() {
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[shield]\nh2_max_header_list_bytes = 65536\n"
    ));
    // A header block that never ends: HEADERS without END_HEADERS, then
    // up to 1,000 small CONTINUATION frames. With a 64 KiB header list
    // and 16 KiB frames, h2 allows a handful of CONTINUATIONs per block.
    let mut tcp = raw_h2(&server).await;
    let block = get_block("nobody.localhost");
    let mut flood = frame(HEADERS, END_STREAM, 1, &block);
    for _ in 0..1000 {
        flood.extend(frame(CONTINUATION, 0, 1, &[0x40, 0x01, b'x', 0x01, b'y']));
    }
    let _ = tcp.write_all(&flood).await;
    let (goaway, _) = read_until_goaway(&mut tcp).await;
    let (code, debug) = goaway.expect("a GOAWAY for the CONTINUATION flood");
    assert_eq!(code, ENHANCE_YOUR_CALM, "{debug}");
    assert!(debug.contains("continuation"), "{debug}");

    // A header block with two CONTINUATIONs is an ordinary request.
    let mut tcp = raw_h2(&server).await;
    let (first, rest) = block.split_at(3);
    let (second, third) = rest.split_at(2);
    let mut ok = frame(HEADERS, END_STREAM, 1, first);
    ok.extend(frame(CONTINUATION, 0, 1, second));
    ok.extend(frame(CONTINUATION, END_HEADERS, 1, third));
    ok.extend(frame(PING, 0, 0, b"bounded!"));
    tcp.write_all(&ok).await.expect("write");
    let (goaway, pinged) = read_until_goaway(&mut tcp).await;
    assert_eq!(goaway, None);
    assert!(pinged);
}

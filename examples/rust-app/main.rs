//! A compiled SpinForge process app: a tiny HTTP server on the standard
//! library only. The tests build it with `rustc` and deploy the binary on
//! its own, so SpinForge detects it as "a single executable".

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn handle(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers; this app reads no bodies.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let body = if path == "/health" {
        "ok".to_string()
    } else {
        format!("hello from a compiled spinlet (pid {})", std::process::id())
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        body
    )?;
    println!("GET {path}");
    Ok(())
}

fn main() -> std::io::Result<()> {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").expect("SpinForge sets PORT");
    let listener = TcpListener::bind(format!("{host}:{port}"))?;
    println!("listening on {host}:{port}");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = handle(stream);
        });
    }
    Ok(())
}

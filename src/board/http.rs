//! The board's HTTP/1.1 server: a thread per connection, kept alive between requests,
//! GET and HEAD only.
//!
//! tiny_http 0.12, used before, ran connections on a pool of four threads that, when a
//! browser opened several connections at once, queued some behind the four it held open:
//! a run page's fifth and sixth connections were read only once another closed (seen as
//! two of its images that never came, in Chromium and in CI).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Reply;

/// The longest request line or header line read, and the most header lines.
const MAX_LINE: u64 = 16 * 1024;
const MAX_HEADERS: usize = 100;
/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 256;
/// A kept-alive connection with no request for this long is closed, and a client that
/// reads no reply for this long is dropped.
const IDLE: Duration = Duration::from_secs(60);

/// Accepts connections on `listener` until the process stops, answering each GET or HEAD
/// with `handle(request target)`. With `local_only`, a request whose `Host` is not this
/// machine (a web page of another site that had its name point at 127.0.0.1: DNS
/// rebinding) is refused 403.
pub fn serve<F>(listener: TcpListener, local_only: bool, handle: F)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            // Out of file descriptors (the connection stays queued): wait, do not spin.
            Err(e) => {
                tracing::debug!("board: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if open.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            refuse(&stream, &Reply::error(503, "too many connections"));
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let (handle, open2) = (handle.clone(), open.clone());
        let spawned = std::thread::Builder::new().name("board-conn".into()).spawn(move || {
            if let Err(e) = connection(&stream, local_only, &*handle) {
                tracing::debug!("board: a connection ended: {e}");
            }
            open2.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("board: no thread for a connection: {e}");
        }
    }
}

/// One connection's requests, in order, until the client closes it, asks to, or idles.
fn connection(stream: &TcpStream, local_only: bool, handle: &dyn Fn(&str) -> Reply) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(line) = read_line(&mut reader)? else { return Ok(()) };
        if line.is_empty() {
            continue; // a stray line break between requests
        }
        let mut words = line.split(' ');
        let (method, target, version) = (words.next().unwrap_or(""), words.next(), words.next());
        let Some((target, version)) = target.zip(version).filter(|(_, v)| v.starts_with("HTTP/1.")) else {
            refuse(stream, &Reply::error(400, "not an HTTP/1 request line"));
            return Ok(());
        };
        // HTTP/1.1 keeps the connection unless told not to; 1.0 closes it unless told to keep.
        let mut keep = version == "HTTP/1.1";
        let (mut body, mut host, mut bad) = (None::<u64>, None::<String>, None);
        for n in 0.. {
            let Some(header) = read_line(&mut reader)? else { return Ok(()) };
            if header.is_empty() {
                break;
            }
            if n == MAX_HEADERS {
                refuse(stream, &Reply::error(431, "too many header lines"));
                return Ok(());
            }
            let Some((name, value)) =
                header.split_once(':').filter(|(n, _)| !n.is_empty() && !n.ends_with([' ', '\t']))
            else {
                bad = Some(Reply::error(400, &format!("not a header line: {header:?}")));
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "connection" if value.to_ascii_lowercase().contains("close") => keep = false,
                "connection" if value.to_ascii_lowercase().contains("keep-alive") => keep = true,
                "host" => host = Some(value.to_ascii_lowercase()),
                // One length, digits only: anything else would leave the next request's
                // start in doubt.
                "content-length" => match value.parse::<u64>() {
                    Ok(v) if value.bytes().all(|b| b.is_ascii_digit()) && body.is_none_or(|b| b == v) => body = Some(v),
                    _ => bad = Some(Reply::error(400, "a bad or repeated Content-Length")),
                },
                "transfer-encoding" => bad = Some(Reply::error(400, "the board reads no request bodies")),
                _ => {}
            }
        }
        if let Some(reply) = bad {
            refuse(stream, &reply);
            return Ok(());
        }
        // The board reads nothing from a body: skip it, so the next request starts right.
        std::io::copy(&mut reader.by_ref().take(body.unwrap_or(0)), &mut std::io::sink())?;
        tracing::debug!("board: {method} {target}");
        if local_only && !host.as_deref().is_none_or(is_local) {
            refuse(stream, &Reply::error(403, "this board answers only to localhost, 127.0.0.1 and [::1]"));
            return Ok(());
        }
        let reply = match method {
            // A panic (a bug, or a reader choking on a corrupt file) answers 500 and keeps
            // the server.
            "GET" | "HEAD" => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(target)))
                .unwrap_or_else(|_| Reply::error(500, &format!("{target}: the board failed"))),
            _ => Reply::error(405, "the board only reads: GET"),
        };
        write_reply(stream, &reply, method != "HEAD", keep)?;
        if !keep {
            return Ok(());
        }
    }
}

/// `Host` names this machine: localhost, 127.0.0.1 or [::1], with or without a port.
fn is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

/// Answers `reply` and closes the connection, first reading (1 s at most) what the client
/// still sends, so the close does not reset the connection before the reply is read.
fn refuse(stream: &TcpStream, reply: &Reply) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_reply(stream, reply, true, false);
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = std::io::copy(&mut stream.take(1 << 20), &mut std::io::sink());
}

/// A line without its line break; `None` at the end of the stream (or an idle timeout); an
/// error for a line longer than `MAX_LINE` or not UTF-8.
fn read_line(reader: &mut BufReader<&TcpStream>) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Ok(None),
        Err(e) => return Err(e),
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a request line too long, or cut"));
    }
    let line = String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn write_reply(mut w: &TcpStream, reply: &Reply, with_body: bool, keep: bool) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}Connection: {}\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len(),
        if reply.status == 405 { "Allow: GET, HEAD\r\n" } else { "" },
        if keep { "keep-alive" } else { "close" }
    );
    // One write for a small reply; the body after the head otherwise.
    if with_body && reply.body.len() <= 64 * 1024 {
        let mut all = head.into_bytes();
        all.extend_from_slice(&reply.body);
        w.write_all(&all)?;
    } else {
        w.write_all(head.as_bytes())?;
        if with_body {
            w.write_all(&reply.body)?;
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a free port answering every target with its own text.
    fn echo() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            serve(listener, true, |t| Reply { status: 200, content_type: "text/plain", body: t.as_bytes().to_vec() })
        });
        addr
    }

    fn read_reply(r: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        (head, body)
    }

    #[test]
    fn more_kept_alive_connections_than_threads_of_the_old_pool_are_all_answered() {
        let addr = echo();
        // Eight connections opened at once, each kept open with a request answered, then
        // a second request on each: every one answered (tiny_http's four pooled threads
        // could leave some waiting until another connection closed).
        let mut conns: Vec<_> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for round in 0..2 {
            for (i, c) in conns.iter_mut().enumerate() {
                write!(c, "GET /c{i}/r{round} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            }
            for (i, c) in conns.iter_mut().enumerate() {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let (head, body) = read_reply(&mut BufReader::new(c.try_clone().unwrap()));
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                assert!(head.contains("Connection: keep-alive"), "{head}");
                assert_eq!(body, format!("/c{i}/r{round}").as_bytes());
            }
        }
    }

    #[test]
    fn http_1_0_head_other_methods_and_garbage() {
        let addr = echo();
        // HTTP/1.0: one reply, then the server closes.
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET /a?b=c HTTP/1.0\r\n\r\n").unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n") && all.ends_with("\r\n\r\n/a?b=c"), "{all}");
        // HEAD: the head with the length of the body it does not send; pipelined requests
        // answered in order; a body skipped.
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "HEAD /xyz HTTP/1.1\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /z HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        let replies: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(replies.len(), 3, "{all}");
        assert!(replies[0].starts_with("200 OK") && replies[0].contains("Content-Length: 4\r\n"));
        assert!(replies[0].ends_with("\r\n\r\n"), "HEAD sends no body: {all}");
        assert!(replies[1].starts_with("405 "), "{all}");
        assert!(
            replies[2].starts_with("200 OK") && replies[2].ends_with("/z") && replies[2].contains("Connection: close")
        );
        // Refused: a Host that is not this machine (DNS rebinding), a length that is not one
        // number, a header name ending in a space; each answered, then closed.
        for (request, status) in [
            ("GET / HTTP/1.1\r\nHost: evil.example:8000\r\n\r\n", "403 Forbidden"),
            ("GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n", "200 OK"),
            ("GET / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabc", "400 Bad Request"),
            ("GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", "400 Bad Request"),
            ("GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc", "400 Bad Request"),
            ("DELETE / HTTP/1.0\r\n\r\n", "405 Method Not Allowed"),
        ] {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(request.as_bytes()).unwrap();
            let mut all = String::new();
            if !request.contains("[::1]") {
                c.read_to_string(&mut all).unwrap();
            } else {
                let (head, _) = read_reply(&mut BufReader::new(c.try_clone().unwrap()));
                all = head;
            }
            assert!(all.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{request:?}: {all}");
            assert_eq!(all.contains("Allow: GET, HEAD\r\n"), status.starts_with("405"), "{all}");
        }
        // Not HTTP: 400, closed.
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"\x16\x03\x01 hello\r\n\r\n").unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
        // A line past the limit: the connection is dropped, the server still answers.
        let mut c = TcpStream::connect(addr).unwrap();
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE as usize));
        let _ = c.write_all(long.as_bytes());
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(rest.is_empty());
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET /still HTTP/1.0\r\n\r\n").unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(all.ends_with("/still"), "{all}");
    }
}

//! Just enough HTTP/1.1 for a status server: one request per connection, the
//! request head only (bodies are never read), and `Connection: close` on every
//! response.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Maximum size in bytes of a request line plus headers.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Request line of an HTTP/1.x request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request target without the query string, such as `/healthz`.
    pub path: String,
}

#[derive(Debug)]
pub enum RequestError {
    /// The peer closed the connection before sending any byte, as TCP health
    /// checks do.
    ClosedBeforeRequest,
    /// The peer closed the connection in the middle of the request head.
    Truncated,
    /// The read timeout expired before the peer sent any byte.
    IdleTimeout,
    /// The read timeout expired in the middle of the request head.
    TimedOut,
    Malformed(&'static str),
    UnsupportedVersion(String),
    TooLarge,
    Io(io::Error),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClosedBeforeRequest => write!(f, "connection closed before a request was sent"),
            Self::Truncated => write!(f, "connection closed in the middle of the request head"),
            Self::IdleTimeout => write!(f, "timed out waiting for a request"),
            Self::TimedOut => write!(f, "timed out in the middle of the request head"),
            Self::Malformed(reason) => write!(f, "malformed request: {reason}"),
            Self::UnsupportedVersion(version) => write!(f, "unsupported HTTP version {version:?}"),
            Self::TooLarge => write!(f, "request head exceeds {MAX_HEAD_BYTES} bytes"),
            Self::Io(err) => write!(f, "read request: {err}"),
        }
    }
}

impl RequestError {
    /// Returns the response to send for this error, or `None` when the peer is gone.
    pub fn response(&self) -> Option<Response> {
        match self {
            Self::ClosedBeforeRequest | Self::Truncated | Self::IdleTimeout | Self::Io(_) => None,
            Self::TimedOut => Some(Response::text(408, "request timeout\n")),
            Self::Malformed(_) => Some(Response::text(400, "bad request\n")),
            Self::UnsupportedVersion(_) => {
                Some(Response::text(505, "HTTP version not supported\n"))
            }
            Self::TooLarge => Some(Response::text(431, "request header fields too large\n")),
        }
    }
}

/// Reads the request head from `reader` and parses its request line.
///
/// Headers are read to find the end of the head, then ignored.
pub fn read_request(reader: &mut impl Read) -> Result<Request, RequestError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            // A socket read timeout surfaces as EAGAIN (WouldBlock) on Linux.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(if head.is_empty() {
                    RequestError::IdleTimeout
                } else {
                    RequestError::TimedOut
                });
            }
            Err(err) => return Err(RequestError::Io(err)),
        };
        if read == 0 {
            return Err(if head.is_empty() {
                RequestError::ClosedBeforeRequest
            } else {
                RequestError::Truncated
            });
        }
        head.extend_from_slice(&chunk[..read]);
        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            break;
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(RequestError::TooLarge);
        }
    }
    if head.len() > MAX_HEAD_BYTES {
        return Err(RequestError::TooLarge);
    }
    parse_request_line(&head)
}

/// Returns the length of the head up to the blank line that ends it. Bare LF
/// line endings are accepted as well as CRLF.
fn find_head_end(buffer: &[u8]) -> Option<usize> {
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buffer.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_request_line(head: &[u8]) -> Result<Request, RequestError> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| RequestError::Malformed("request line is not UTF-8"))?
        .trim_end_matches('\r');

    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(
            "request line must be METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::Malformed("invalid method"));
    }
    if !target.starts_with('/') {
        return Err(RequestError::Malformed(
            "request target must start with '/'",
        ));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(RequestError::UnsupportedVersion(version.to_owned()));
    }

    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

/// Plain-text response.
pub struct Response {
    pub status: u16,
    pub body: String,
    /// Value of the `Allow` header, sent with 405 responses.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            allow: None,
        }
    }

    /// Writes the response to `writer`, without the body if `head_only` is set
    /// (for HEAD requests). `Content-Length` is the body length either way.
    pub fn write_to(&self, writer: &mut impl Write, head_only: bool) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            http_date(SystemTime::now()),
            self.body.len(),
        );
        if let Some(allow) = self.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        writer.write_all(out.as_bytes())?;
        writer.flush()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Formats `time` as an IMF-fixdate, such as `Sun, 06 Nov 1994 08:49:37 GMT`.
/// Times before 1970 are formatted as the epoch.
pub fn http_date(time: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];

    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// The calculation shifts the year to start on March 1, so that the leap day
/// is the last day of a year, and counts in 400-year eras of 146,097 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 719,468 days separate 0000-03-01 from 1970-01-01.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Month index with March as 0, and the day of that month.
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(raw: &str) -> Result<Request, RequestError> {
        read_request(&mut raw.as_bytes())
    }

    #[test]
    fn request_line_with_query() {
        let request = parse("GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/healthz");
    }

    #[test]
    fn request_with_bare_lf() {
        let request = parse("HEAD / HTTP/1.0\nHost: x\n\n").unwrap();
        assert_eq!(request.method, "HEAD");
        assert_eq!(request.path, "/");
    }

    #[test]
    fn malformed_request_lines() {
        for raw in [
            "GET\r\n\r\n",
            "GET /  HTTP/1.1\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET healthz HTTP/1.1\r\n\r\n",
        ] {
            let result = parse(raw);
            assert!(
                matches!(result, Err(RequestError::Malformed(_))),
                "{raw:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn unsupported_version() {
        let result = parse("GET / HTTP/2.0\r\n\r\n");
        assert!(matches!(result, Err(RequestError::UnsupportedVersion(_))));
    }

    #[test]
    fn oversized_head() {
        let raw = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(matches!(parse(&raw), Err(RequestError::TooLarge)));
    }

    #[test]
    fn closed_connections() {
        assert!(matches!(parse(""), Err(RequestError::ClosedBeforeRequest)));
        assert!(matches!(parse("GET / HT"), Err(RequestError::Truncated)));
    }

    #[test]
    fn http_date_known_values() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let rfc_example = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(rfc_example), "Sun, 06 Nov 1994 08:49:37 GMT");
        let leap_day = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(http_date(leap_day), "Thu, 29 Feb 2024 12:34:56 GMT");
    }

    #[test]
    fn response_head_only() {
        let mut out = Vec::new();
        Response::text(200, "ok\n")
            .write_to(&mut out, true)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}

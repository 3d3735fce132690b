//! statusd: a minimal HTTP/1.1 status server for scratch images.
//!
//! `GET /healthz` returns `ok`, and `GET /` returns the uptime, pid, uid and
//! the user name that /etc/passwd lists for that uid. Each connection is
//! handled on its own thread and carries one request.

mod http;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use http::{Request, RequestError, Response};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// Maximum time that a connection may wait for the request head or for the
/// response to be written.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum number of connections handled at the same time. Further
/// connections are closed without a response until one finishes.
const MAX_CONNECTIONS: usize = 256;

/// Number of connections whose thread is running.
static ACTIVE_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

const USAGE: &str = "\
Usage: statusd [--listen ADDR]
       statusd --version

Serve plain-text status over HTTP/1.1:
  GET /healthz  200 \"ok\"
  GET /         200 uptime in seconds, pid, uid and user name
  other paths   404
HEAD is accepted wherever GET is. SIGTERM and SIGINT stop the server at once
with exit status 0.

Options:
  --listen ADDR  TCP address (host:port) to listen on [default: 0.0.0.0:8080]
  --version      print \"statusd VERSION\" and exit
  -h, --help     print this help and exit
";

enum Command {
    Serve { listen: String },
    Version,
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| "missing value for --listen".to_owned())?;
            }
            _ => match arg.strip_prefix("--listen=") {
                Some(value) => listen = value.to_owned(),
                None => return Err(format!("unexpected argument {arg:?}")),
            },
        }
    }
    Ok(Command::Serve { listen })
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("statusd {VERSION}");
            ExitCode::SUCCESS
        }
        Ok(Command::Serve { listen }) => match serve(&listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("statusd: {err}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("statusd: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Accepts connections on `listen` until the process is signalled.
fn serve(listen: &str) -> io::Result<()> {
    let listener = TcpListener::bind(listen)
        .map_err(|err| io::Error::new(err.kind(), format!("listen on {listen}: {err}")))?;
    exit_on_termination_signals();
    let started = Instant::now();
    eprintln!("statusd: listening on {}", listener.local_addr()?);

    let mut at_limit = false;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                // Errors such as EMFILE repeat until a connection closes, so
                // pause instead of spinning.
                eprintln!("statusd: accept failed: {err}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };

        if ACTIVE_CONNECTIONS.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            // Log once per overload period, not once per dropped connection.
            if !at_limit {
                eprintln!("statusd: {MAX_CONNECTIONS} connections open, closing new ones until one finishes");
                at_limit = true;
            }
            continue;
        }
        at_limit = false;

        ACTIVE_CONNECTIONS.fetch_add(1, Ordering::AcqRel);
        let spawned = thread::Builder::new().spawn(move || {
            handle_connection(stream, started);
            ACTIVE_CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(err) = spawned {
            ACTIVE_CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
            eprintln!("statusd: failed to spawn a connection thread: {err}");
        }
    }
    Ok(())
}

fn handle_connection(mut stream: TcpStream, started: Instant) {
    let peer = stream.peer_addr().map_or_else(
        |_| "unknown peer".to_owned(),
        |addr: SocketAddr| addr.to_string(),
    );
    if let Err(err) = stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
    {
        eprintln!("statusd: {peer}: set socket timeouts: {err}");
        return;
    }

    let (response, head_only) = match http::read_request(&mut stream) {
        Ok(request) => (route(&request, started), request.method == "HEAD"),
        // Health checkers and browsers open connections that never carry a
        // request, so these are not logged.
        Err(RequestError::ClosedBeforeRequest | RequestError::IdleTimeout) => return,
        Err(err) => {
            eprintln!("statusd: {peer}: {err}");
            match err.response() {
                Some(response) => (response, false),
                None => return,
            }
        }
    };
    if let Err(err) = response.write_to(&mut stream, head_only) {
        eprintln!("statusd: {peer}: write response: {err}");
    }
}

fn route(request: &Request, started: Instant) -> Response {
    let body = match request.path.as_str() {
        "/healthz" => "ok\n".to_owned(),
        "/" => status_text(started),
        _ => return Response::text(404, "not found\n"),
    };
    if request.method != "GET" && request.method != "HEAD" {
        return Response {
            allow: Some("GET, HEAD"),
            ..Response::text(405, "method not allowed\n")
        };
    }
    Response::text(200, body)
}

fn status_text(started: Instant) -> String {
    let uid = current_uid();
    let user = uid
        .as_deref()
        .and_then(user_name)
        .unwrap_or_else(|| "unknown".to_owned());
    format!(
        "statusd {VERSION}\nuptime_seconds {}\npid {}\nuid {}\nuser {user}\n",
        started.elapsed().as_secs(),
        std::process::id(),
        uid.as_deref().unwrap_or("unknown"),
    )
}

/// Returns the real uid from the `Uid:` line of /proc/self/status, or `None`
/// when /proc is not mounted.
fn current_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    line.split_whitespace().next().map(str::to_owned)
}

/// Returns the name of the /etc/passwd entry for `uid`, or `None` when the
/// file or the entry is missing.
fn user_name(uid: &str) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        // name:password:uid:gid:gecos:home:shell
        let mut fields = line.split(':');
        let name = fields.next()?;
        let entry_uid = fields.nth(1)?;
        (entry_uid == uid).then(|| name.to_owned())
    })
}

/// Makes SIGTERM and SIGINT end the process with exit status 0.
///
/// In a container statusd usually runs as PID 1, and the kernel discards a
/// signal sent to PID 1 of a PID namespace when its action is the default. The
/// container would then stop only on SIGKILL, after the runtime's grace period.
/// Exiting at once drops any request in flight, so a health probe that
/// arrives at that moment fails once.
#[cfg(unix)]
fn exit_on_termination_signals() {
    use std::os::raw::c_int;

    // SIGINT and SIGTERM have these numbers on Linux (x86_64 and aarch64
    // included) and on macOS.
    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    const SIG_ERR: usize = usize::MAX;

    // libc functions that std already links. The signal handler may call only
    // async-signal-safe functions, which write and _exit are.
    extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
        fn _exit(status: c_int) -> !;
    }

    extern "C" fn exit_now(_signum: c_int) {
        const MESSAGE: &[u8] = b"statusd: received termination signal, exiting\n";
        // SAFETY: MESSAGE is a valid buffer of MESSAGE.len() bytes, and both
        // calls are async-signal-safe.
        unsafe {
            write(2, MESSAGE.as_ptr(), MESSAGE.len());
            _exit(0);
        }
    }

    for signum in [SIGINT, SIGTERM] {
        // SAFETY: exit_now has the signature of a signal handler and calls
        // only async-signal-safe functions.
        if unsafe { signal(signum, exit_now) } == SIG_ERR {
            eprintln!("statusd: failed to install handler for signal {signum}");
        }
    }
}

#[cfg(not(unix))]
fn exit_on_termination_signals() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
        }
    }

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn route_statuses() {
        let started = Instant::now();
        assert_eq!(route(&request("GET", "/healthz"), started).status, 200);
        assert_eq!(route(&request("GET", "/healthz"), started).body, "ok\n");
        assert_eq!(route(&request("HEAD", "/"), started).status, 200);
        assert_eq!(route(&request("GET", "/missing"), started).status, 404);
        assert_eq!(route(&request("POST", "/healthz"), started).status, 405);
    }

    #[test]
    fn status_text_fields() {
        let text = status_text(Instant::now());
        assert!(text.contains(&format!("\npid {}\n", std::process::id())));
        assert!(text.contains("\nuptime_seconds 0\n"));
        assert!(text.contains("\nuid "));
    }

    #[test]
    fn parse_args_listen_forms() {
        let Ok(Command::Serve { listen }) = parse_args(args(&[])) else {
            panic!()
        };
        assert_eq!(listen, DEFAULT_LISTEN);
        let Ok(Command::Serve { listen }) = parse_args(args(&["--listen", "127.0.0.1:1"])) else {
            panic!()
        };
        assert_eq!(listen, "127.0.0.1:1");
        let Ok(Command::Serve { listen }) = parse_args(args(&["--listen=[::1]:2"])) else {
            panic!()
        };
        assert_eq!(listen, "[::1]:2");
    }

    #[test]
    fn parse_args_errors() {
        assert!(parse_args(args(&["--listen"])).is_err());
        assert!(parse_args(args(&["--port", "1"])).is_err());
        assert!(matches!(
            parse_args(args(&["--version"])),
            Ok(Command::Version)
        ));
    }
}

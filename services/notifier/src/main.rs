//! notifier: posts a text message to an HTTPS endpoint.
//!
//! The server certificate is verified against the system CA certificates
//! only, so in a scratch image the CA bundle at
//! /etc/ssl/certs/ca-certificates.crt is what makes delivery possible.

mod https;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use https::HttpsUrl;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const DEFAULT_MESSAGE: &str = "test notification from notifier";
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

const USAGE: &str = "\
Usage: notifier --url https://HOST[:PORT]/PATH [--message TEXT] [--timeout SECONDS]
       notifier --version

POST a text/plain message to an HTTPS URL and print \"delivered URL status CODE\"
when the response status is 2xx. Any other status or error exits 1. The server
certificate must chain to a CA certificate from SSL_CERT_FILE or SSL_CERT_DIR
when either is set, else from the system store such as
/etc/ssl/certs/ca-certificates.crt.

Options:
  --url URL          https URL to post to (required)
  --message TEXT     request body [default: \"test notification from notifier\"]
  --timeout SECONDS  maximum time for the TCP connect and for each read or
                     write [default: 10]
  --version          print \"notifier VERSION\" and exit
  -h, --help         print this help and exit
";

#[derive(Debug)]
enum Command {
    Send {
        url: String,
        message: String,
        timeout: Duration,
    },
    Version,
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut url = None;
    let mut message = DEFAULT_MESSAGE.to_owned();
    let mut timeout_seconds = DEFAULT_TIMEOUT_SECONDS;

    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = || {
            inline_value
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("missing value for {name}"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            "--url" => url = Some(value()?),
            "--message" => message = value()?,
            "--timeout" => {
                let raw = value()?;
                timeout_seconds = raw
                    .parse()
                    .ok()
                    .filter(|&seconds| seconds > 0)
                    .ok_or_else(|| format!("invalid --timeout {raw:?}: expected a whole number of seconds greater than 0"))?;
            }
            _ => return Err(format!("unexpected argument {name:?}")),
        }
    }

    let url = url.ok_or_else(|| "missing required option --url".to_owned())?;
    Ok(Command::Send {
        url,
        message,
        timeout: Duration::from_secs(timeout_seconds),
    })
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("notifier {VERSION}");
            ExitCode::SUCCESS
        }
        Ok(Command::Send {
            url,
            message,
            timeout,
        }) => match send(&url, &message, timeout) {
            Ok(status) => {
                println!("delivered {url} status {status}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("notifier: {err}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("notifier: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Posts `message` to `url` and returns the status code if it is 2xx.
fn send(url: &str, message: &str, timeout: Duration) -> Result<u16, String> {
    let parsed = HttpsUrl::parse(url)?;
    let config = Arc::new(https::client_config()?);
    let (code, reason) = https::post(&parsed, message.as_bytes(), config, timeout)?;
    if !(200..300).contains(&code) {
        return Err(format!(
            "POST {url}: server returned status {code} {reason}"
        ));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Command, String> {
        parse_args(
            list.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    #[test]
    fn parse_args_send() {
        let Ok(Command::Send {
            url,
            message,
            timeout,
        }) = parse(&["--url", "https://h/", "--message=a=b", "--timeout", "3"])
        else {
            panic!("expected Command::Send");
        };
        assert_eq!(url, "https://h/");
        assert_eq!(message, "a=b");
        assert_eq!(timeout, Duration::from_secs(3));
    }

    #[test]
    fn parse_args_defaults() {
        let Ok(Command::Send {
            message, timeout, ..
        }) = parse(&["--url=https://h/"])
        else {
            panic!("expected Command::Send");
        };
        assert_eq!(message, DEFAULT_MESSAGE);
        assert_eq!(timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECONDS));
    }

    #[test]
    fn parse_args_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--url"]).is_err());
        assert!(parse(&["--url", "https://h/", "--timeout", "0"]).is_err());
        assert!(parse(&["--url", "https://h/", "--verbose"]).is_err());
        assert!(matches!(parse(&["--version"]), Ok(Command::Version)));
    }
}

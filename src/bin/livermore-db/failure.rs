//! The one place where a command's failure becomes what the operator reads: one line on stderr, the
//! exit status, and the password scrubbed out, whichever command failed and whatever layer below
//! echoed it.

use std::process::ExitCode;

/// A command's failure: one line for the operator, already free of secrets.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// A usage error (exit status 2) rather than a failure of the command (1).
    pub usage: bool,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            usage: false,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            usage: true,
        }
    }
}

/// One line saying what went wrong, without a stack trace.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        other => other.to_string(),
    }
    .replace('\n', " ")
}

/// Prints a failure (with `secret` scrubbed out) and gives the exit status: 2 for a usage error, 1
/// otherwise.
pub fn report(failure: Failure, secret: Option<&str>) -> ExitCode {
    eprintln!("error: {}", scrubbed(failure.message, secret));
    ExitCode::from(if failure.usage { 2 } else { 1 })
}

fn scrubbed(message: String, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => message.replace(secret, "***"),
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_reaches_the_message() {
        let pw = "p@ss:w/o#r%d?&$'\" x";
        let message = format!("server said: bad {pw} here, {pw}");
        assert_eq!(
            scrubbed(message, Some(pw)),
            "server said: bad *** here, ***"
        );
        assert_eq!(scrubbed("plain".to_owned(), Some("")), "plain");
        assert_eq!(report(Failure::usage("x"), Some(pw)), ExitCode::from(2));
        assert_eq!(report(Failure::new("x"), None), ExitCode::from(1));
    }
}

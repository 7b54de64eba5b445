//! Validated input types. Requests are parsed into these at the edge, so the
//! rest of the service never sees an unchecked login name or password.
//!
//! The limits are declared once, with `buf.validate` annotations in
//! `proto/taskgate/auth/v1/auth.proto`, and checked there by the validator
//! before a handler runs; the types here take the same limits from [`rules`]
//! and add what the contract cannot say (trimming, normalising, the shape of
//! an email address or phone number, password strength).

use std::{
    collections::HashSet,
    sync::{LazyLock, OnceLock},
};

use regex::Regex;

use taskgate_proto::auth::v1::rules;

use crate::error::AuthError;

/// The fewest characters in a username (`RegisterRequest.username`'s `min_len`).
pub const USERNAME_MIN_CHARS: usize = rules::REGISTER_REQUEST_USERNAME_MIN_LEN;
/// The most characters in a username (`RegisterRequest.username`'s `max_len`).
pub const USERNAME_MAX_CHARS: usize = rules::REGISTER_REQUEST_USERNAME_MAX_LEN;
/// The longest email address, in bytes (`RegisterRequest.email`'s `max_bytes`).
pub const EMAIL_MAX_BYTES: usize = rules::REGISTER_REQUEST_EMAIL_MAX_BYTES;
/// The fewest characters in a new password (`RegisterRequest.password`'s `min_len`).
pub const PASSWORD_MIN_CHARS: usize = rules::REGISTER_REQUEST_PASSWORD_MIN_LEN;
/// The most characters in a new password (`RegisterRequest.password`'s `max_len`).
pub const PASSWORD_MAX_CHARS: usize = rules::REGISTER_REQUEST_PASSWORD_MAX_LEN;

/// The common-password list shipped with the service (one per line, lowercase).
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

/// A username: [`USERNAME_MIN_CHARS`] to [`USERNAME_MAX_CHARS`] characters of ASCII letters, digits and `._-`. Its case is
/// kept; uniqueness is case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Validates `raw` (surrounding whitespace is trimmed).
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        let s = raw.trim();
        let len = s.chars().count();
        if !(USERNAME_MIN_CHARS..=USERNAME_MAX_CHARS).contains(&len) {
            return Err(AuthError::invalid(
                "username",
                format!("must be {USERNAME_MIN_CHARS} to {USERNAME_MAX_CHARS} characters long"),
            ));
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(AuthError::invalid("username", "may contain only letters, digits, '.', '_' and '-'"));
        }
        Ok(Username(s.to_owned()))
    }

    /// The username as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address of a plausible shape, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Checks the shape of `raw` (`local@domain.tld`, no spaces, at most
    /// [`EMAIL_MAX_BYTES`] bytes) and lowercases it.
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        let s = raw.trim().to_lowercase();
        let bad = || AuthError::invalid("email", "is not a valid email address");
        if s.len() > EMAIL_MAX_BYTES || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return Err(bad());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            return Err(bad());
        }
        Ok(Email(s))
    }

    /// The lowercased address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `RegisterRequest.phone`'s pattern: `+` and 8 to 15 digits, the first
/// not 0, with spaces, dots, dashes, parentheses and no-break spaces
/// anywhere.
static PHONE_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(rules::REGISTER_REQUEST_PHONE_PATTERN).expect("the contract's phone pattern compiles"));

/// A phone number in E.164 form: `+` and 8 to 15 digits, the first not 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    /// Checks `raw` against the contract's pattern and normalises it to
    /// E.164 (drops spaces, dashes, dots and parentheses).
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        if !PHONE_PATTERN.is_match(raw) {
            return Err(AuthError::invalid(
                "phone",
                "must be in international (E.164) form: '+' and the digits, the first not 0",
            ));
        }
        Ok(Phone(raw.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}')).collect()))
    }

    /// The E.164 number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password fit to be set: [`PASSWORD_MIN_CHARS`] to [`PASSWORD_MAX_CHARS`] characters, not on the common-password
/// list, and not easy to guess by zxcvbn's estimate. Deliberately not
/// `Debug`, so it cannot end up in a log line.
pub struct Password(String);

/// The zxcvbn score a new password needs (0-4): 3 is "safely unguessable:
/// moderate protection from an offline slow-hash attack" (about 10^8
/// guesses or more).
pub const MIN_PASSWORD_SCORE: zxcvbn::Score = zxcvbn::Score::Three;

impl Password {
    /// Validates a new password. `related` are the account's own login
    /// names: a password built from them is easy to guess.
    ///
    /// The strength estimate costs up to a few milliseconds of CPU for a long
    /// password: call it off the async workers (the service runs it on the
    /// blocking pool).
    pub fn parse(raw: &str, related: &[&str]) -> Result<Self, AuthError> {
        let len = raw.chars().count();
        if len < PASSWORD_MIN_CHARS {
            return Err(AuthError::invalid(
                "password",
                format!("must be at least {PASSWORD_MIN_CHARS} characters long"),
            ));
        }
        if len > PASSWORD_MAX_CHARS {
            return Err(AuthError::invalid(
                "password",
                format!("must be at most {PASSWORD_MAX_CHARS} characters long"),
            ));
        }
        if is_common_password(raw) {
            return Err(AuthError::invalid(
                "password",
                "is one of the most commonly used passwords, which attackers try first; choose another",
            ));
        }
        let estimate = zxcvbn::zxcvbn(raw, related);
        if estimate.score() < MIN_PASSWORD_SCORE {
            let mut reason = String::from("is too easy to guess");
            if let Some(feedback) = estimate.feedback() {
                if let Some(warning) = feedback.warning() {
                    reason.push_str(&format!(": {}", warning.to_string().trim_end_matches('.').to_lowercase()));
                }
                if let Some(suggestion) = feedback.suggestions().first() {
                    reason.push_str(&format!("; {}", suggestion.to_string().trim_end_matches('.').to_lowercase()));
                }
            }
            reason.push_str("; a few unrelated words make a strong password");
            return Err(AuthError::invalid("password", reason));
        }
        Ok(Password(raw.to_owned()))
    }

    /// The password bytes, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The shipped list, parsed once.
fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        COMMON_PASSWORDS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    })
}

/// True when `password` (compared lowercase) is on the shipped list.
pub fn is_common_password(password: &str) -> bool {
    common_passwords().contains(password.to_lowercase().as_str())
}

/// What a login name given to Login is: told apart by its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginName {
    /// Contains no `@` and does not start with `+`.
    Username(Username),
    /// Contains `@`.
    Email(Email),
    /// Starts with `+`.
    Phone(Phone),
}

impl LoginName {
    /// Classifies and normalises `raw`; `None` when it cannot be any login
    /// name (the caller then treats it as an unknown user).
    pub fn parse(raw: &str) -> Option<Self> {
        let s = raw.trim();
        if s.contains('@') {
            Email::parse(s).ok().map(LoginName::Email)
        } else if s.starts_with('+') {
            Phone::parse(s).ok().map(LoginName::Phone)
        } else {
            Username::parse(s).ok().map(LoginName::Username)
        }
    }

    /// A stable lowercase key for the login throttle.
    pub fn throttle_key(&self) -> String {
        match self {
            LoginName::Username(u) => format!("u:{}", u.as_str().to_lowercase()),
            LoginName::Email(e) => format!("e:{}", e.as_str()),
            LoginName::Phone(p) => format!("p:{}", p.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule declared in auth.proto, read from the descriptors at run time.
    fn declared(message: &str, field: &str, rule: &str) -> prost_reflect::Value {
        taskgate_common::validate::declared_rule(&format!("taskgate.auth.v1.{message}"), field, rule)
            .unwrap_or_else(|| panic!("{message}.{field} declares no {rule}"))
    }

    #[test]
    fn the_domain_limits_are_the_rules_declared_in_the_proto() {
        use prost_reflect::Value;
        let len = |n: usize| Value::U64(n as u64);
        assert_eq!(declared("RegisterRequest", "username", "string.min_len"), len(USERNAME_MIN_CHARS));
        assert_eq!(declared("RegisterRequest", "username", "string.max_len"), len(USERNAME_MAX_CHARS));
        assert_eq!(declared("RegisterRequest", "email", "string.max_bytes"), len(EMAIL_MAX_BYTES));
        for (message, field) in [("RegisterRequest", "password"), ("ChangePasswordRequest", "new_password")] {
            assert_eq!(declared(message, field, "string.min_len"), len(PASSWORD_MIN_CHARS), "{message}.{field}");
            assert_eq!(declared(message, field, "string.max_len"), len(PASSWORD_MAX_CHARS), "{message}.{field}");
        }
        assert_eq!(
            declared("LoginRequest", "password", "string.max_bytes"),
            declared("ChangePasswordRequest", "current_password", "string.max_bytes"),
            "a password is bounded the same wherever it is checked"
        );
        let Value::String(phone) = declared("RegisterRequest", "phone", "string.pattern") else {
            panic!("the phone pattern is a string");
        };
        assert_eq!(phone, rules::REGISTER_REQUEST_PHONE_PATTERN, "Phone::parse checks the declared pattern");
        for message in ["RevokeSessionRequest", "DisableUserRequest", "EnableUserRequest"] {
            assert_eq!(declared(message, "id", "string.uuid"), Value::Bool(true), "{message}");
        }
        // And the domain types draw the line exactly there.
        let name = |n: usize| "a".repeat(n);
        assert!(Username::parse(&name(USERNAME_MIN_CHARS)).is_ok());
        assert!(Username::parse(&name(USERNAME_MIN_CHARS - 1)).is_err());
        assert!(Username::parse(&name(USERNAME_MAX_CHARS)).is_ok());
        assert!(Username::parse(&name(USERNAME_MAX_CHARS + 1)).is_err());
        let Value::String(pattern) = declared("RegisterRequest", "username", "string.pattern") else {
            panic!("the username pattern is a string");
        };
        assert_eq!(pattern, "^[A-Za-z0-9._-]*$", "the characters Username::parse allows");
        assert!(
            reason(Password::parse(&"x".repeat(PASSWORD_MIN_CHARS - 1), &[]).err().expect("short"))
                .contains("at least")
        );
        assert!(
            reason(Password::parse(&"x".repeat(PASSWORD_MAX_CHARS + 1), &[]).err().expect("long")).contains("at most")
        );
    }

    #[test]
    fn usernames_are_checked_for_length_and_characters() {
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(USERNAME_MAX_CHARS + 1)).is_err());
        assert!(Username::parse("bad name").is_err());
        assert!(Username::parse("héllo").is_err());
        assert_eq!(Username::parse(" Al.ice_-1 ").expect("valid").as_str(), "Al.ice_-1");
    }

    #[test]
    fn emails_are_checked_for_shape_and_lowercased() {
        assert_eq!(Email::parse("Bob@Example.COM").expect("valid").as_str(), "bob@example.com");
        for bad in ["bob", "@x.com", "bob@", "bob@x", "bob@@x.com", "b ob@x.com", "bob@x..com"] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn phones_are_normalised_to_e164() {
        assert_eq!(Phone::parse("+1 (415) 555-0100").expect("valid").as_str(), "+14155550100");
        assert!(Phone::parse("4155550100").is_err());
        assert!(Phone::parse("+1234567").is_err());
        assert!(Phone::parse("+1234567890123456").is_err());
        assert!(Phone::parse("+44abc5550100").is_err());
        assert!(Phone::parse("+01234567890").is_err(), "the first digit is not 0");
        assert_eq!(Phone::parse(" +1.234\u{a0}567-8 ").expect("8 digits").as_str(), "+12345678");
        assert!(Phone::parse("+123456789012345").is_ok(), "15 digits");
        assert!(Phone::parse("").is_err());
    }

    fn reason(e: AuthError) -> String {
        match e {
            AuthError::InvalidArgument { field, reason } => format!("{field} {reason}"),
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn passwords_are_checked_for_length_commonness_and_strength() {
        assert!(Password::parse("short", &[]).is_err());
        assert!(Password::parse(&"x".repeat(PASSWORD_MAX_CHARS + 1), &[]).is_err());
        assert!(reason(Password::parse("Password1", &[]).err().expect("common")).contains("most commonly used"));
        assert!(Password::parse("QWERTY123", &[]).is_err());
        assert!(reason(Password::parse("aaaaaaaaaaaa", &[]).err().expect("weak")).starts_with("password is too easy"));
        assert!(Password::parse("alice1990!", &["alice"]).is_err());
        for good in ["correct horse battery staple", "an admin passphrase 42", "latency-is-a-feature-7"] {
            assert!(Password::parse(good, &[]).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn the_common_password_list_has_at_least_ten_thousand_entries() {
        assert!(common_passwords().len() >= 10_000, "only {} common passwords", common_passwords().len());
        assert!(is_common_password("trustno1") && is_common_password("Dragon"));
    }

    #[test]
    fn login_names_are_classified_by_shape() {
        assert!(matches!(LoginName::parse("alice"), Some(LoginName::Username(_))));
        assert!(matches!(LoginName::parse("a@b.co"), Some(LoginName::Email(_))));
        assert!(matches!(LoginName::parse("+14155550100"), Some(LoginName::Phone(_))));
        assert_eq!(LoginName::parse("x"), None);
    }
}

//! Channel names: validation, namespace lookup and permission rules.
//!
//! A name is `[namespace<boundary>]rest`, ASCII only, at most `channel.max_length`
//! bytes. `:` (namespace), `#` (user boundary) and `$` (private prefix) have meaning;
//! whitespace, control characters, `*`, `&` and `>` are reserved and rejected, so a
//! channel name can later map safely onto broker subjects and patterns.

use tidings_protocol::codes::{self, ErrorCode};

use crate::config::{ChannelOptions, Config};

/// Characters a channel name may not contain.
pub const RESERVED: &[u8] = b"*&>";

/// Prefix of channels that need a subscription token.
pub const PRIVATE_PREFIX: &str = "$";

/// A validated channel with its namespace options.
pub struct ResolvedChannel<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub options: &'a ChannelOptions,
}

/// Validates a channel name and finds its namespace.
///
/// # Errors
/// 107 bad request for an empty, too long, non-ASCII or reserved-character name;
/// 102 unknown channel for a namespace that is not configured.
pub fn resolve<'a>(config: &'a Config, name: &'a str) -> Result<ResolvedChannel<'a>, ErrorCode> {
    if name.is_empty() || name.len() > config.channel.max_length {
        return Err(codes::ERROR_BAD_REQUEST);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && !RESERVED.contains(&b))
    {
        return Err(codes::ERROR_BAD_REQUEST);
    }
    let namespace = config.namespace_of(name);
    let options = config
        .namespace(namespace)
        .ok_or(codes::ERROR_UNKNOWN_CHANNEL)?;
    Ok(ResolvedChannel {
        name,
        namespace,
        options,
    })
}

/// [`resolve`], plus the namespace's `channel_regex` for the part of the name
/// after the namespace: the check for what a client asks (subscribe, publish,
/// presence, history).
///
/// # Errors
/// [`resolve`]'s; 107 when the name does not match the namespace's regex.
pub fn resolve_for_client<'a>(
    config: &'a Config,
    name: &'a str,
) -> Result<ResolvedChannel<'a>, ErrorCode> {
    let ch = resolve(config, name)?;
    if let Some(regex) = ch.options.channel_regex() {
        let unprefixed = name.strip_prefix(PRIVATE_PREFIX).unwrap_or(name);
        let rest = if ch.namespace.is_empty() {
            unprefixed
        } else {
            &unprefixed[ch.namespace.len() + config.channel.namespace_boundary.len()..]
        };
        if !regex.is_match(rest) {
            return Err(codes::ERROR_BAD_REQUEST);
        }
    }
    Ok(ch)
}

impl ResolvedChannel<'_> {
    /// Users allowed by a user-limited name (`dialog#42,43`), when the namespace
    /// enables them and the name has the boundary.
    pub fn limited_users<'c>(
        &'c self,
        config: &'c Config,
    ) -> Option<impl Iterator<Item = &'c str>> {
        if !self.options.allow_user_limited_channels {
            return None;
        }
        let (_, users) = self
            .name
            .split_once(config.channel.user_boundary.as_str())?;
        Some(
            users
                .split(config.channel.user_separator.as_str())
                .filter(|u| !u.is_empty()),
        )
    }

    pub fn is_private(&self) -> bool {
        self.name.starts_with(PRIVATE_PREFIX)
    }

    pub fn history_enabled(&self) -> bool {
        self.options.history_size > 0 && !self.options.history_ttl.is_zero()
    }

    /// Recoveries in this channel give the latest publication only
    /// (`force_recovery_mode: "cache"`).
    pub fn cache_recovery(&self) -> bool {
        self.history_enabled() && self.options.force_recovery_mode == "cache"
    }
}

/// The rules for a client subscribing on its own, without a subscription token: `$`
/// channels need a token; `client.insecure` allows the rest; a user-limited name
/// (`dialog#42,43`) admits only the users it names, where the namespace enables such
/// names; otherwise the namespace's subscribe permission decides. Shared by the
/// Centrifugo session and the Socket.IO join event.
///
/// # Errors
/// 107/102 for a bad channel, 103 when the client may not subscribe.
pub fn check_client_subscribe(config: &Config, name: &str, user: &str) -> Result<(), ErrorCode> {
    let ch = resolve(config, name)?;
    if ch.is_private() {
        return Err(codes::ERROR_PERMISSION_DENIED);
    }
    if config.client.insecure {
        return Ok(());
    }
    if ch.name.contains(config.channel.user_boundary.as_str()) {
        let Some(mut users) = ch.limited_users(config) else {
            return Err(codes::ERROR_PERMISSION_DENIED);
        };
        return if !user.is_empty() && users.any(|u| u == user) {
            Ok(())
        } else {
            Err(codes::ERROR_PERMISSION_DENIED)
        };
    }
    if !can_subscribe(ch.options, user) {
        return Err(codes::ERROR_PERMISSION_DENIED);
    }
    Ok(())
}

/// Whether a client may subscribe without a subscription token.
pub fn can_subscribe(opts: &ChannelOptions, user: &str) -> bool {
    opts.allow_subscribe_for_client && (!user.is_empty() || opts.allow_subscribe_for_anonymous)
}

/// Whether a client may publish from the client side.
pub fn can_publish(opts: &ChannelOptions, user: &str, subscribed: bool) -> bool {
    let base = opts.allow_publish_for_client || (opts.allow_publish_for_subscriber && subscribed);
    base && (!user.is_empty() || opts.allow_publish_for_anonymous)
}

/// Whether a client may query presence.
pub fn can_presence(opts: &ChannelOptions, user: &str, subscribed: bool) -> bool {
    let base = opts.allow_presence_for_client || (opts.allow_presence_for_subscriber && subscribed);
    base && (!user.is_empty() || opts.allow_presence_for_anonymous)
}

/// Whether a client may query history.
pub fn can_history(opts: &ChannelOptions, user: &str, subscribed: bool) -> bool {
    let base = opts.allow_history_for_client || (opts.allow_history_for_subscriber && subscribed);
    base && (!user.is_empty() || opts.allow_history_for_anonymous)
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        let mut cfg = Config::development();
        cfg.channel.max_length = 10;
        assert!(resolve(&cfg, "news").is_ok());
        assert_eq!(resolve(&cfg, "").err(), Some(codes::ERROR_BAD_REQUEST));
        assert_eq!(
            resolve(&cfg, "abcdefghijk").err(),
            Some(codes::ERROR_BAD_REQUEST)
        );
        assert_eq!(resolve(&cfg, "nëws").err(), Some(codes::ERROR_BAD_REQUEST));
        assert_eq!(resolve(&cfg, "a b").err(), Some(codes::ERROR_BAD_REQUEST));
        assert_eq!(resolve(&cfg, "a*").err(), Some(codes::ERROR_BAD_REQUEST));
        assert_eq!(
            resolve(&cfg, "x:y").err(),
            Some(codes::ERROR_UNKNOWN_CHANNEL)
        );
    }

    #[test]
    fn anonymous_needs_the_anonymous_flag_too() {
        let opts = ChannelOptions {
            allow_subscribe_for_client: true,
            ..Default::default()
        };
        assert!(can_subscribe(&opts, "42"));
        assert!(!can_subscribe(&opts, ""));
    }

    #[test]
    fn glob_patterns() {
        assert!(super::glob_match("chat:*", "chat:room"));
        assert!(super::glob_match("*room*", "chat:room1"));
        assert!(!super::glob_match("chat:*", "news"));
        assert!(super::glob_match("news", "news"));
    }
}

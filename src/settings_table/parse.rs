//! How a setting's text is read into its value: yes/no as Django and clap take it, whole
//! seconds, comma-separated lists, and `SECURE_PROXY_SSL_HEADER`'s `HEADER,value`.

/// `true`/`false`, and as Django's and clap's boolish values `1`/`0`, `yes`/`no`, `on`/`off`.
pub(super) fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "y" | "t" => Ok(true),
        "false" | "0" | "no" | "off" | "n" | "f" => Ok(false),
        _ => Err("use true or false".into()),
    }
}

pub(super) fn seconds(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| "use a whole number of seconds".into())
}

pub(super) fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `SECURE_PROXY_SSL_HEADER`'s text: `HEADER,value`, the header as Django's `META` name
/// (`HTTP_X_FORWARDED_PROTO`) or as sent (`X-Forwarded-Proto`); empty for none.
pub(super) fn proxy_ssl_header(text: &str) -> Result<Option<(String, String)>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let Some((name, value)) = text.split_once(',') else {
        return Err(format!(
            "{text:?} is not HEADER,value (as HTTP_X_FORWARDED_PROTO,https)"
        ));
    };
    let (name, value) = (name.trim(), value.trim());
    let name = match name.strip_prefix("HTTP_") {
        Some(meta) => meta.replace('_', "-"),
        None => name.to_owned(),
    };
    let token =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !token(&name) || value.is_empty() || value.contains(',') {
        return Err(format!(
            "{text:?} is not HEADER,value (as HTTP_X_FORWARDED_PROTO,https)"
        ));
    }
    Ok(Some((name, value.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::proxy_ssl_header;

    #[test]
    fn the_proxy_ssl_header_is_read_as_django_s_meta_name_or_as_sent() {
        let read = |t: &str| proxy_ssl_header(t);
        let xfp = Some(("X-Forwarded-Proto".to_owned(), "https".to_owned()));
        assert_eq!(read("X-Forwarded-Proto,https"), Ok(xfp));
        assert_eq!(
            read("HTTP_X_FORWARDED_PROTO, https"),
            Ok(Some(("X-FORWARDED-PROTO".into(), "https".into())))
        );
        assert_eq!(read(""), Ok(None));
        for bad in [
            "X-Forwarded-Proto",
            "X Forwarded,https",
            ",https",
            "H,",
            "H,a,b",
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }
}

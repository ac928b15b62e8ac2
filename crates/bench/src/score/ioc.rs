//! Indicators of compromise in free text: IPv4 addresses, domains, file hashes and file paths,
//! each normalised so that the model's spelling and the expected one compare equal.
//!
//! Normalisation: defanged forms are refanged (`[.]`, `(.)`, `[dot]`, `hxxp`); IPs and ports are
//! split (`1.2.3.4:443` gives `1.2.3.4`); URLs and e-mail addresses give their host; domains and
//! hashes are lower-cased, domains lose a trailing dot; Windows paths (`C:\`, `%VAR%\`, `\\host\`)
//! are lower-cased with `/` turned into `\` and doubled backslashes collapsed; Unix paths keep
//! their case. Items are delimited by whitespace and `, ; " ' < > ( ) { } [ ] | =` and backticks,
//! so a path containing spaces is not recognised (limitation of the extractor).

use std::collections::BTreeSet;

/// Extensions that look like top-level domains but name files (`svch0st.exe`, `update.ps1`).
const FILE_EXTENSIONS: &[&str] = &[
    "exe", "dll", "sys", "ps1", "psm1", "bat", "cmd", "vbs", "js", "jse", "hta", "lnk", "scr",
    "msi", "doc", "docx", "docm", "xls", "xlsx", "xlsm", "ppt", "pptx", "pdf", "txt", "log", "tmp",
    "dat", "bin", "zip", "rar", "7z", "gz", "tgz", "tar", "iso", "img", "sh", "py", "pl", "rb",
    "so", "dylib", "plist", "conf", "cfg", "ini", "json", "xml", "yml", "yaml", "html", "htm",
    "php", "asp", "aspx", "jsp", "dmp", "service", "app", "pkg", "dmg", "deb", "rpm", "jar",
    "class", "csv", "md", "sql", "db", "key", "pem", "crt", "lock", "hash",
];

/// Every indicator found in `text`, normalised.
pub fn extract(text: &str) -> BTreeSet<String> {
    let refanged = refang(text);
    refanged
        .split(|c: char| c.is_whitespace() || ",;\"'<>(){}[]|=`".contains(c))
        .flat_map(classify)
        .collect()
}

/// Undoes the usual defanging of indicators.
fn refang(text: &str) -> String {
    let mut out = text.to_string();
    for (from, to) in [
        ("[.]", "."),
        ("(.)", "."),
        ("{.}", "."),
        ("[dot]", "."),
        ("[:]", ":"),
        ("hxxp", "http"),
        ("HXXP", "HTTP"),
    ] {
        out = out.replace(from, to);
    }
    out
}

/// The indicators in one delimited token (none, one, or several for `a:b` pairs).
pub fn classify(token: &str) -> Vec<String> {
    let token = token
        .trim_start_matches(|c: char| "*:.-!?".contains(c))
        .trim_end_matches(|c: char| "*:.!?".contains(c));
    if token.is_empty() {
        return Vec::new();
    }
    if let Some(path) = windows_path(token) {
        return vec![path];
    }
    if token.starts_with('/') || token.starts_with("~/") {
        return if token.len() > 1 {
            vec![token.to_string()]
        } else {
            Vec::new()
        };
    }
    if let Some((_, rest)) = token.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or_default();
        return classify(host.split(':').next().unwrap_or_default());
    }
    if let Some((_, domain)) = token.rsplit_once('@') {
        return domain_name(domain).into_iter().collect();
    }
    if token.contains(':') {
        return token.split(':').flat_map(classify).collect();
    }
    ipv4(token)
        .or_else(|| hash(token))
        .or_else(|| domain_name(token))
        .into_iter()
        .collect()
}

fn windows_path(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let drive = bytes.len() >= 3
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && (bytes[2] == b'\\' || bytes[2] == b'/');
    let env_var = token.starts_with('%') && token[1..].contains("%\\");
    let unc = token.starts_with("\\\\") && token.len() > 2;
    if !(drive || env_var || unc) {
        return None;
    }
    let mut out = String::with_capacity(token.len());
    let lowered = token.to_lowercase().replace('/', "\\");
    for c in lowered.chars() {
        // Collapse doubled backslashes (JSON-style escaping), but keep a UNC prefix.
        if c == '\\' && out.ends_with('\\') && out.len() > 1 {
            continue;
        }
        out.push(c);
    }
    Some(out)
}

fn ipv4(token: &str) -> Option<String> {
    let parts: Vec<&str> = token.split('.').collect();
    let valid = parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n <= 255)
        });
    valid.then(|| {
        parts
            .iter()
            .map(|p| p.parse::<u16>().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(".")
    })
}

fn hash(token: &str) -> Option<String> {
    let is_hash =
        matches!(token.len(), 32 | 40 | 64 | 128) && token.bytes().all(|b| b.is_ascii_hexdigit());
    is_hash.then(|| token.to_ascii_lowercase())
}

fn domain_name(token: &str) -> Option<String> {
    let name = token.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return None;
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let tld = labels.last()?;
    let tld_ok = tld.len() >= 2
        && tld.bytes().all(|b| b.is_ascii_alphabetic())
        && !FILE_EXTENSIONS.contains(tld);
    (labels.iter().all(label_ok) && tld_ok).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn extracts_each_kind() {
        let text = "src=10.0.0.15:51515 dst=185.220.101.4 name=Update-Check.BadCDN.xyz. \
                    SHA256=E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855 \
                    Image=C:\\Users\\Bob\\svch0st.exe /tmp/.X11-unix/.kworker";
        assert_eq!(
            extract(text),
            set(&[
                "10.0.0.15",
                "185.220.101.4",
                "update-check.badcdn.xyz",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "c:\\users\\bob\\svch0st.exe",
                "/tmp/.X11-unix/.kworker",
            ])
        );
    }

    #[test]
    fn refangs_and_unwraps_urls_and_mail() {
        assert_eq!(
            extract("hxxp://login-micr0soft[.]com/auth?x=1 from billing@paypa1-support.com"),
            set(&["login-micr0soft.com", "paypa1-support.com"])
        );
        assert_eq!(extract("https://user@1.2.3.4:8443/x"), set(&["1.2.3.4"]));
    }

    #[test]
    fn ignores_non_indicators() {
        assert!(extract("powershell.exe wrote update.ps1; version 5.0 port 443 1. 2.").is_empty());
        assert!(extract("999.1.1.1 and 1.2.3 and Mozilla/5.0 and deadbeef").is_empty());
        assert!(extract("/ : **").is_empty());
    }

    #[test]
    fn windows_paths_compare_case_and_escape_insensitively() {
        assert_eq!(
            classify("C:\\\\ProgramData\\\\svc\\\\update.ps1"),
            vec!["c:\\programdata\\svc\\update.ps1"]
        );
        assert_eq!(
            classify("c:/programdata/svc/update.ps1"),
            vec!["c:\\programdata\\svc\\update.ps1"]
        );
        assert_eq!(
            classify("\\\\fs01\\share$\\a.exe"),
            vec!["\\\\fs01\\share$\\a.exe"]
        );
        assert_eq!(classify("%APPDATA%\\x.exe"), vec!["%appdata%\\x.exe"]);
    }
}

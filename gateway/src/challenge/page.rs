//! The challenge page and its assets, rendered from the templates in `assets/`.
//!
//! Everything is served by the gateway from the route's own origin, so the page works under a
//! strict Content-Security-Policy: no inline script or style, no third-party resource, workers
//! only from `'self'`. The page's parameters travel in a `<script type="application/json">`
//! block, which the policy allows because it is never executed.

use serde::Serialize;

const PAGE: &str = include_str!("assets/page.html");
const STYLE: &str = include_str!("assets/style.css");
/// The page's script.
pub const APP_JS: &str = include_str!("assets/app.js");
/// The worker that searches nonces.
pub const WORKER_JS: &str = include_str!("assets/worker.js");

/// The policy every challenge response carries: only this origin's scripts, styles, workers
/// and fetches; no frames, forms, plugins or base rewriting.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; worker-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the page's script reads.
#[derive(Serialize)]
struct Data<'a> {
    seed: &'a str,
    difficulty: u8,
    verify: String,
    check: String,
    worker: String,
}

/// `s` with the HTML specials escaped (text and attribute values alike).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The page for one seed. `dir` is the route's endpoint directory (ends in `/`); `title` and
/// `text` are plain text.
pub fn render(dir: &str, title: &str, text: &str, seed: &str, difficulty: u8) -> String {
    let data = Data {
        seed,
        difficulty,
        verify: format!("{dir}verify"),
        check: format!("{dir}check"),
        worker: format!("{dir}worker.js"),
    };
    // JSON inside a script element: `<` is escaped so no value can close the element.
    let json = serde_json::to_string(&data)
        .unwrap_or_else(|_| "{}".to_owned())
        .replace('<', "\\u003c");
    PAGE.replace("{{dir}}", &escape_html(dir))
        .replace("{{data}}", &json)
        .replace("{{difficulty}}", &difficulty.to_string())
        .replace("{{title}}", &escape_html(title))
        .replace("{{text}}", &escape_html(text))
}

/// The style sheet in the route's accent colour (already validated as `#rrggbb`).
pub fn style(colour: &str) -> String {
    STYLE.replace("{{colour}}", colour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_the_operator_and_the_request_put_in_it() {
        let page = render(
            "/a\"b/.netwall/challenge/",
            "<script>alert(1)</script>",
            "Tom & Jerry's",
            "seed</script><script>x",
            16,
        );
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("Tom &amp; Jerry&#39;s"));
        assert!(!page.contains("seed</script>"), "{page}");
        assert!(page.contains("seed\\u003c/script>"));
        assert!(!page.contains("{{"), "every placeholder is filled: {page}");
        // No inline script or style: the only scripts are the data block and a same-origin src.
        assert_eq!(page.matches("<script").count(), 2);
        assert!(!page.contains("style="));
        assert!(page.contains("<noscript>"));
    }
}

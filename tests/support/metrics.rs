//! The proxy's metrics read back: a Prometheus text exposition (format 0.0.4) parsed into
//! `# TYPE` lines and samples, strictly, so that a malformed line fails the test. Needs
//! `support::client`.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether this is the series `name` with exactly `labels`, in any order.
    fn is(&self, name: &str, labels: &[(String, String)]) -> bool {
        self.name == name
            && self.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| self.label(k) == Some(v.as_str()))
    }
}

/// A parsed exposition.
#[derive(Debug)]
pub struct Metrics {
    /// The text as the proxy wrote it, for failure messages.
    pub text: String,
    /// Family name to its `# TYPE` (`counter`, `gauge`, `histogram`).
    #[allow(dead_code)] // read by the tests of the exposition itself
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

/// `GET url` (an admin listener's `/metrics`), expecting a 200, parsed.
#[allow(dead_code)] // test files that read the in-process proxy's metrics use its probe
pub async fn scrape(url: &str) -> Metrics {
    let answer = super::client::get(url).await;
    assert_eq!(answer.status, 200, "GET {url}: {:?}", answer.body);
    Metrics::parse(std::str::from_utf8(&answer.body).expect("UTF-8"))
}

impl Metrics {
    /// Parses `text`; panics on any line that is neither a comment nor a sample.
    pub fn parse(text: &str) -> Metrics {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') {
                samples.push(parse_sample(line));
            }
        }
        Metrics {
            text: text.to_string(),
            types,
            samples,
        }
    }

    /// The value of `series` (`name` or `name{label="value",...}`, labels in any order), if
    /// the proxy exposes it; panics if it shows more than once.
    pub fn get(&self, series: &str) -> Option<f64> {
        let (name, labels) = parse_series(series);
        let mut matching = self.samples.iter().filter(|s| s.is(&name, &labels));
        let first = matching.next()?;
        assert!(
            matching.next().is_none(),
            "{series} appears more than once:\n{}",
            self.text
        );
        Some(first.value)
    }

    /// [`Metrics::get`] of a series that must be there.
    #[allow(dead_code)] // for the test files that read a series that exists from the start
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in the metrics:\n{}", self.text))
    }

    /// [`Metrics::get`], reading a series that does not exist (yet) as 0, as an untouched
    /// counter reads.
    #[allow(dead_code)] // not for the test files that tell a missing series from a zero
    pub fn value_or_zero(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }

    /// Asserts that [`Metrics::value_or_zero`] of `series` is `expected`, showing the whole
    /// exposition otherwise.
    #[allow(dead_code)] // for the test files that check exact counts
    #[track_caller]
    pub fn assert_value(&self, series: &str, expected: f64) {
        assert_eq!(self.value_or_zero(series), expected, "{series} in:\n{}", self.text);
    }
}

/// `name{labels}` (no value) as a name and its labels.
fn parse_series(series: &str) -> (String, Vec<(String, String)>) {
    let sample = parse_sample(&format!("{series} 0"));
    (sample.name, sample.labels)
}

fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("not a `name{{labels}} value` line: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        bad();
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices();
        loop {
            // A label name up to '=', or the closing brace.
            let mut label = String::new();
            let mut closed = None;
            for (i, c) in chars.by_ref() {
                match c {
                    '}' if label.is_empty() => {
                        closed = Some(i);
                        break;
                    }
                    '=' => break,
                    c if c.is_ascii_alphanumeric() || c == '_' => label.push(c),
                    _ => bad(),
                }
            }
            if let Some(i) = closed {
                rest = &after_brace[i + 1..];
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        _ => bad(),
                    },
                    Some(c) => value.push(c),
                    None => bad(),
                }
            }
            labels.push((label, value));
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    rest = &after_brace[i + 1..];
                    break;
                }
                _ => bad(),
            }
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| bad());
    // No timestamps are expected; a value is one float token.
    let value: f64 = value.parse().unwrap_or_else(|_| bad());
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

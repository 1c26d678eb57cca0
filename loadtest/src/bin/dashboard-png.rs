//! The dashboard's key panels as one PNG, for readers without Grafana: scrapes every service's
//! `/metrics` for a while (as Prometheus would), then draws what the "Shop overview" dashboard
//! shows from the same series: requests per second, 5xx share and p99 per instance, checkouts
//! confirmed vs declined, the queue depth the warehouse sees, the warehouse's order lag, the
//! publish-confirm latency and the gateway's ATW weight per target.
//!
//!   dashboard-png --duration 60s --out docs/img/dashboard.png \
//!       --target gateway=http://127.0.0.1:8080 --target cart-1=http://127.0.0.1:8082 ...
//!
//! `scripts/render-dashboard.sh` runs it against the native stack under load.

use anyhow::{anyhow, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loadtest::parse_duration;
use plotters::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Render the dashboard's key panels as a PNG from scraped /metrics")]
struct Args {
    /// An instance to scrape: NAME=BASE_URL (repeat).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// How long to scrape (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Time between scrapes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    /// The PNG to write.
    #[arg(long, default_value = "dashboard.png")]
    out: PathBuf,
    /// The administrator's API key (`/metrics` needs it with AUTH_MODE=on).
    #[arg(long, env = "LOADTEST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// One series' value in one scrape.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape of one instance: seconds since the start, and its samples.
struct Scrape {
    t: f64,
    instance: String,
    samples: Vec<Sample>,
}

/// Prometheus text format, the subset the services write: `name{a="x",b="y"} value`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)),
                None => (series, BTreeMap::new()),
            };
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// A series of points for one line of a panel.
type Line = (String, Vec<(f64, f64)>);

/// The scrapes of each instance, in time order.
struct Run {
    by_instance: BTreeMap<String, Vec<Scrape>>,
}

impl Run {
    /// Sum of the samples named `name` whose labels pass `keep`, per scrape of `instance`.
    fn sums(&self, instance: &str, name: &str, keep: impl Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
        self.by_instance
            .get(instance)
            .map(|scrapes| {
                scrapes
                    .iter()
                    .map(|s| {
                        let sum = s
                            .samples
                            .iter()
                            .filter(|x| x.name == name && keep(x))
                            .map(|x| x.value)
                            .sum();
                        (s.t, sum)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The per-second rate of a counter between consecutive scrapes.
    fn rate(&self, instance: &str, name: &str, keep: impl Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
        per_second(&self.sums(instance, name, keep))
    }

    /// The `q` quantile (in ms) of a histogram's new observations between consecutive scrapes,
    /// all label sets but `le` summed; intervals without observations are left out.
    fn quantile_ms(
        &self,
        instance: &str,
        name: &str,
        q: f64,
        keep: impl Fn(&Sample) -> bool,
    ) -> Vec<(f64, f64)> {
        let Some(scrapes) = self.by_instance.get(instance) else {
            return Vec::new();
        };
        let bucket = format!("{name}_bucket");
        let cumulative: Vec<(f64, Vec<(f64, f64)>)> = scrapes
            .iter()
            .map(|s| {
                let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
                for x in s.samples.iter().filter(|x| x.name == bucket && keep(x)) {
                    let le = match x.labels.get("le").map(String::as_str) {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => le.parse().unwrap_or(f64::INFINITY),
                        None => continue,
                    };
                    by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += x.value;
                }
                let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                (s.t, buckets)
            })
            .collect();
        cumulative
            .windows(2)
            .filter_map(|w| {
                let (t, now) = (&w[1].0, &w[1].1);
                let before = &w[0].1;
                let delta: Vec<(f64, f64)> = now
                    .iter()
                    .map(|(le, c)| {
                        let old = before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1);
                        (*le, c - old)
                    })
                    .collect();
                histogram_quantile(q, &delta).map(|v| (*t, v * 1000.0))
            })
            .collect()
    }

    fn instances(&self, prefix: &str) -> Vec<String> {
        self.by_instance
            .keys()
            .filter(|i| i.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn per_second(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| (w[1].0, ((w[1].1 - w[0].1) / (w[1].0 - w[0].0)).max(0.0)))
        .collect()
}

/// Prometheus's `histogram_quantile` on cumulative (le, count) buckets: linear within a bucket.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

async fn scrape_all(args: &Args) -> anyhow::Result<Run> {
    let targets: Vec<(String, String)> = args
        .targets
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(n, u)| (n.to_string(), u.trim_end_matches('/').to_string()))
                .ok_or_else(|| anyhow!("--target {t}: expected NAME=URL"))
        })
        .collect::<anyhow::Result<_>>()?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let mut by_instance: BTreeMap<String, Vec<Scrape>> = BTreeMap::new();
    let mut failures: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(args.interval);
    while started.elapsed() <= args.duration {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        for (instance, base) in &targets {
            let mut request = hyper::Request::get(format!("{base}/metrics"));
            if let Some(key) = &args.api_key {
                request = request.header("x-api-key", key);
            }
            let request = request.body(Empty::new()).context("a request")?;
            let text = match client.request(request).await {
                Ok(r) if r.status().is_success() => {
                    let body = r.into_body().collect().await.map(|b| b.to_bytes());
                    String::from_utf8_lossy(&body.unwrap_or_default()).into_owned()
                }
                Ok(r) => {
                    failures.insert(instance.clone(), format!("answered {}", r.status()));
                    continue;
                }
                Err(e) => {
                    failures.insert(instance.clone(), e.to_string());
                    continue;
                }
            };
            by_instance
                .entry(instance.clone())
                .or_default()
                .push(Scrape {
                    t,
                    instance: instance.clone(),
                    samples: parse_exposition(&text),
                });
        }
    }
    for (instance, why) in &failures {
        eprintln!("dashboard-png: some scrapes of {instance} failed ({why})");
    }
    anyhow::ensure!(!by_instance.is_empty(), "no /metrics could be scraped");
    Ok(Run { by_instance })
}

/// The eight panels, each a title, a unit and its lines.
fn panels(run: &Run) -> Vec<(&'static str, &'static str, Vec<Line>)> {
    let all: Vec<String> = run.by_instance.keys().cloned().collect();
    let each = |f: &dyn Fn(&str) -> Vec<(f64, f64)>, instances: &[String]| -> Vec<Line> {
        instances
            .iter()
            .map(|i| (i.clone(), f(i)))
            .filter(|(_, points)| !points.is_empty())
            .collect()
    };
    let carts = run.instances("cart");
    let warehouses = run.instances("warehouse");
    let mut checkouts = Vec::new();
    for (label, name) in [
        ("confirmed", "checkouts_confirmed_total"),
        ("declined", "checkouts_declined_total"),
        ("failed", "checkouts_failed_total"),
    ] {
        let mut summed: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for cart in &carts {
            for (t, v) in run.rate(cart, name, |_| true) {
                summed.entry((t * 10.0) as u64).or_insert((t, 0.0)).1 += v;
            }
        }
        checkouts.push((label.to_string(), summed.into_values().collect()));
    }
    let mut depth = Vec::new();
    let mut weights = Vec::new();
    for w in &warehouses {
        for queue in series_label(run, w, "warehouse_queue_messages", "queue") {
            let points = run.sums(w, "warehouse_queue_messages", |s| {
                s.labels.get("queue") == Some(&queue)
            });
            depth.push((queue, points));
        }
    }
    for g in run.instances("gateway") {
        for target in series_label(run, &g, "gateway_target_weight", "target") {
            let points = run.sums(&g, "gateway_target_weight", |s| {
                s.labels.get("target") == Some(&target)
            });
            weights.push((target, points));
        }
    }
    let mut confirm = Vec::new();
    for i in carts.iter().chain(&warehouses) {
        for dest in series_label(run, i, "amqp_publish_confirm_seconds_bucket", "destination") {
            let points = run.quantile_ms(i, "amqp_publish_confirm_seconds", 0.99, |s| {
                s.labels.get("destination") == Some(&dest)
            });
            confirm.push((format!("{i} → {dest}"), points));
        }
    }
    vec![
        (
            "requests per second, per instance",
            "req/s",
            each(&|i| run.rate(i, "http_requests_total", |_| true), &all),
        ),
        (
            "5xx share of answers, per instance",
            "%",
            each(
                &|i| {
                    let errors = run.rate(i, "http_requests_total", |s| {
                        s.labels.get("status").is_some_and(|c| c.starts_with('5'))
                    });
                    let total = run.rate(i, "http_requests_total", |_| true);
                    errors
                        .iter()
                        .zip(&total)
                        .filter(|(_, t)| t.1 > 0.0)
                        .map(|(e, t)| (t.0, 100.0 * e.1 / t.1))
                        .collect()
                },
                &all,
            ),
        ),
        (
            "p99 latency per instance",
            "ms",
            each(
                &|i| run.quantile_ms(i, "http_request_duration_seconds", 0.99, |_| true),
                &all,
            ),
        ),
        ("checkouts per second (all carts)", "/s", checkouts),
        ("queue depth seen by the warehouse", "messages", depth),
        (
            "warehouse order lag p99 (created → committed)",
            "ms",
            each(
                &|i| run.quantile_ms(i, "warehouse_order_lag_seconds", 0.99, |_| true),
                &warehouses,
            ),
        ),
        ("publish-confirm latency p99", "ms", confirm),
        ("gateway ATW weight per target", "weight", weights),
    ]
}

/// The values a label takes in an instance's series named `name`.
fn series_label(run: &Run, instance: &str, name: &str, label: &str) -> Vec<String> {
    let mut values: Vec<String> = run
        .by_instance
        .get(instance)
        .into_iter()
        .flatten()
        .flat_map(|s| s.samples.iter())
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get(label).cloned())
        .collect();
    values.sort();
    values.dedup();
    values
}

fn draw(run: &Run, out: &PathBuf, seconds: f64) -> anyhow::Result<()> {
    let chart_err = |e: &dyn std::fmt::Debug| anyhow!("chart: {e:?}");
    anyhow::ensure!(
        loadtest::output::register_font(),
        "the embedded font could not be loaded"
    );
    let root = BitMapBackend::new(out, (1600, 1840)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(&e))?;
    let scraped: usize = run.by_instance.values().map(Vec::len).sum();
    let title = format!(
        "Shop overview: {} instances, {scraped} scrapes over {seconds:.0} s",
        run.by_instance.len()
    );
    let root = root
        .titled(&title, ("sans-serif", 26))
        .map_err(|e| chart_err(&e))?;
    for (area, (title, unit, lines)) in root.split_evenly((4, 2)).iter().zip(panels(run)) {
        let ymax = lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .caption(title, ("sans-serif", 18))
            .build_cartesian_2d(0f64..seconds.max(1.0), 0f64..ymax)
            .map_err(|e| chart_err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| chart_err(&e))?;
        if lines.is_empty() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "no data in this run",
                    (seconds * 0.4, ymax * 0.5),
                    ("sans-serif", 16),
                )))
                .map_err(|e| chart_err(&e))?;
            continue;
        }
        for (idx, (label, points)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(idx).to_rgba();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| chart_err(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(|e| chart_err(&e))?;
    }
    root.present().map_err(|e| chart_err(&e))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = scrape_all(&args).await?;
    for scrapes in run.by_instance.values() {
        if let Some(last) = scrapes.last() {
            eprintln!(
                "{}: {} scrapes, {} series",
                last.instance,
                scrapes.len(),
                last.samples.len()
            );
        }
    }
    draw(&run, &args.out, args.duration.as_secs_f64())?;
    println!("{}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_and_a_quantile_are_read_like_prometheus() {
        let samples = parse_exposition(
            "# HELP x y\nhttp_requests_total{route=\"/a\",method=\"GET\",status=\"200\"} 12\nup 1\n\
             w{target=\"http://a:1\",q=\"x\\\"y\"} 0.5\n",
        );
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels["status"], "200");
        assert_eq!(samples[2].labels["q"], "x\"y");
        assert_eq!(samples[2].labels["target"], "http://a:1");
        // 100 observations: 50 at or below 10 ms, 100 at or below 20 ms: p99 is 19.8 ms.
        let q = histogram_quantile(0.99, &[(0.01, 50.0), (0.02, 100.0), (f64::INFINITY, 100.0)]);
        assert!((q.expect("a value") - 0.0198).abs() < 1e-9);
        assert_eq!(
            histogram_quantile(0.99, &[(0.01, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }
}

//! The CPU-over-time chart: a hand-written SVG with one line per profile (and mode), axes, labels
//! and the report's own active-CPU targets (mean and p99, the product's `[slo]`) as dashed lines.

use super::report::Report;
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// Escapes text for XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step giving at most about 10 ticks over `span` seconds.
fn time_step(span: f64) -> f64 {
    [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| span / s <= 10.0)
    .unwrap_or(7200.0)
}

/// Renders system CPU over time for every profile of `report`, with the report's active-CPU mean
/// and p99 targets as dashed lines.
pub fn render(report: &Report) -> String {
    let mean_target = report.targets.slo.active_cpu_mean_max_percent;
    let p99_target = report.targets.slo.active_cpu_p99_max_percent;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span = report
        .profiles
        .iter()
        .flat_map(|p| p.cpu_timeline.iter().map(|c| c.t_s))
        .fold(1.0_f64, f64::max);
    let x = |t: f64| LEFT + t / span * plot_w;
    let y = |pct: f64| TOP + (1.0 - pct.clamp(0.0, 100.0) / 100.0) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">System CPU over time \
         (percent of {} CPUs, 100 ms samples)</text>",
        LEFT + plot_w / 2.0,
        report.host.host.online_cpus
    );
    // Grid and y axis labels.
    for pct in (0..=100).step_by(10) {
        let yy = y(f64::from(pct));
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{pct} %</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    // X axis ticks.
    let step = time_step(span);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            svg,
            "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>",
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0
        );
        t += step;
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\" stroke=\"#333\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the profile's \
         measurement started (idle window first)</text>\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">system CPU \
         (%)</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        TOP + plot_h / 2.0,
        b = TOP + plot_h,
        r = LEFT + plot_w,
    );
    // Target lines.
    for (pct, label) in [(p99_target, "p99 target"), (mean_target, "mean target")] {
        let yy = y(pct);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#555\" \
             stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{label} \
             {pct} %</text>",
            LEFT + plot_w,
            LEFT + plot_w + 6.0,
            yy + 4.0
        );
    }
    // One line per profile, and the legend.
    for (i, p) in report.profiles.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = p
            .cpu_timeline
            .iter()
            .map(|c| format!("{:.1},{:.1}", x(c.t_s), y(c.percent)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let ly = TOP + 60.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 10.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" \
             stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&p.profile)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn chart_has_a_line_per_profile_and_the_target_lines() {
        let mut report = sample_report();
        let mut second = report.profiles[0].clone();
        second.profile = "fast <2>".into();
        report.profiles.push(second);
        let svg = render(&report);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("mean target 35 %") && svg.contains("p99 target 50 %"));
        assert!(svg.contains("fast &lt;2&gt;"));
        // 30 % at y = TOP + 0.7 * plot height = 40 + 0.7 * 390.
        assert!(svg.contains(&format!("{:.1}", 40.0 + 0.7 * 390.0)), "{svg}");
        // The last sample (t = 2.2 s, the span) sits at the right edge of the plot.
        assert!(svg.contains(&format!("{:.1},", WIDTH - RIGHT)));
    }

    #[test]
    fn target_lines_follow_the_configured_targets() {
        let mut report = sample_report();
        report.targets.slo.active_cpu_mean_max_percent = 20.0;
        report.targets.slo.active_cpu_p99_max_percent = 40.0;
        let svg = render(&report);
        assert!(svg.contains("mean target 20 %") && svg.contains("p99 target 40 %"));
        assert!(
            !svg.contains("35 %") && !svg.contains("target 50 %"),
            "{svg}"
        );
    }

    #[test]
    fn time_ticks_stay_readable() {
        assert_eq!(time_step(8.0), 1.0);
        assert_eq!(time_step(95.0), 10.0);
        assert_eq!(time_step(1000.0), 120.0);
    }
}

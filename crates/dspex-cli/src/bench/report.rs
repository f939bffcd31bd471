//! The table `dspex bench` prints and the Markdown it writes.

use std::fmt::Write as _;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::{Row, Sizes};

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

pub(super) fn table(rows: &[Row]) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "", "workload", "DSPex", "anchors", "ratio", "goal", "met", "note",
    ]);
    for row in rows {
        table.add_row([
            row.id,
            &row.workload,
            &row.ours,
            &row.anchors,
            &row.ratio,
            &row.goal,
            verdict(row.met),
            &row.note,
        ]);
    }
    table
}

pub(super) fn markdown(rows: &[Row], command: &str, sizes: &Sizes) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "The latest run of `dspex bench` (B1–B8 of the performance design), each \
         figure beside its anchors measured in the same run on the same machine; \
         medians of {} runs, {} build, {} cores. Made by:\n\n```\n{command}\n```\n",
        sizes.repeats,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    let _ = writeln!(
        out,
        "| | workload | DSPex | anchors | ratio | goal | met | note |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.id,
            row.workload,
            row.ours,
            row.anchors,
            row.ratio,
            row.goal,
            verdict(row.met),
            row.note.replace('|', "\\|")
        );
    }
    out
}

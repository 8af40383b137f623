//! `import-clerk FILE`: a bulk backfill of Clerk users from a JSON array or newline-delimited JSON.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use livermore_db::clerk::{BackfillReport, ClerkUser, RecordNote, apply_batch};

use crate::env::Target;
use crate::failure::{Failure, describe};

/// How the file numbers its records, for the report.
#[derive(Clone, Copy)]
enum Numbering {
    /// A JSON array: the record's index, from 1.
    Record,
    /// Newline-delimited JSON: the line number.
    Line,
}

impl Numbering {
    fn label(self, position: usize) -> String {
        match self {
            Numbering::Record => format!("record {position}"),
            Numbering::Line => format!("line {position}"),
        }
    }
}

/// A record's position, and the Clerk user or why it is not one.
type Record = (usize, Result<ClerkUser, String>);

/// The records of a file.
fn parse(text: &str) -> Result<(Numbering, Vec<Record>), String> {
    if text.trim_start().starts_with('[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON array of records: {e}"))?;
        let records = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, serde_json::from_value(v).map_err(|e| e.to_string())))
            .collect();
        Ok((Numbering::Record, records))
    } else {
        let records = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| (i + 1, serde_json::from_str(line).map_err(|e| e.to_string())))
            .collect();
        Ok((Numbering::Line, records))
    }
}

fn progress(total: usize) -> ProgressBar {
    // Drawn on stderr when it is a terminal; hidden otherwise (CI, pipes).
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} users  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Runs the import; `Ok(false)` (exit status 1) when any record was rejected.
pub async fn import_clerk(
    target: &Target,
    file: &Path,
    batch_size: usize,
) -> Result<bool, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", file.display())))?;
    let (numbering, records) =
        parse(&text).map_err(|e| Failure::new(format!("{}: {e}", file.display())))?;
    println!("target: {}", target.shown);
    println!(
        "import-clerk: {} records from {}",
        records.len(),
        file.display()
    );

    let mut conn = target.connect_existing().await?;
    let mut report = BackfillReport::default();
    let mut valid = Vec::with_capacity(records.len());
    for (position, record) in records {
        match record {
            Ok(user) => valid.push((position, user)),
            Err(reason) => report.rejected.push(RecordNote { position, reason }),
        }
    }

    let bar = progress(valid.len());
    for batch in valid.chunks(batch_size.max(1)) {
        let done = apply_batch(&mut conn, batch).await.map_err(|e| {
            bar.abandon();
            let reason = match &e {
                livermore_db::Error::Database(db) => describe(db),
                other => other.to_string(),
            };
            Failure::new(format!(
                "import stopped after {} of {} users (batches before it are kept): {reason}",
                bar.position(),
                valid.len()
            ))
        })?;
        report.merge(done);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    report.rejected.sort_by_key(|r| r.position);

    println!("  created    {}", report.created);
    println!("  updated    {}", report.updated);
    println!("  unchanged  {}", report.unchanged);
    if report.deactivated > 0 {
        println!("  deleted    {}", report.deactivated);
    }
    if !report.not_created.is_empty() {
        println!(
            "  not created {} (no verified email address; a later event with one creates them)",
            report.not_created.len()
        );
        for r in &report.not_created {
            println!("    {}", numbering.label(r.position));
        }
    }
    println!("  rejected   {}", report.rejected.len());
    for r in &report.rejected {
        println!("    {}: {}", numbering.label(r.position), r.reason);
    }
    if !report.role_notes.is_empty() {
        println!(
            "  bad role   {} (public_metadata.role is not a valid role: kept if set by hand, else user)",
            report.role_notes.len()
        );
        for r in &report.role_notes {
            println!("    {}: {}", numbering.label(r.position), r.reason);
        }
    }
    Ok(report.rejected.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arrays_and_lines_and_numbers_bad_records() {
        let ok = r#"{"id":"user_1","updated_at":1,"email_addresses":[]}"#;
        let (n, records) = parse(&format!("[{ok}, {{\"id\": \"user_5\"}}]")).unwrap();
        assert!(matches!(n, Numbering::Record));
        assert!(records[0].1.is_ok());
        assert_eq!(records[1].0, 2);
        assert!(records[1].1.as_ref().unwrap_err().contains("updated_at"));

        let (n, records) = parse(&format!("{ok}\n\n{{not json\n{ok}\n")).unwrap();
        assert!(matches!(n, Numbering::Line));
        let positions: Vec<usize> = records.iter().map(|r| r.0).collect();
        assert_eq!(positions, [1, 3, 4]);
        assert!(records[1].1.is_err());
        assert_eq!(n.label(3), "line 3");

        assert!(parse("[1, 2").is_err());
    }
}

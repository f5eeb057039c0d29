//! Plain-text tables with aligned columns (for `status`, `reload`, `jobs`).

/// A table: a header row and data rows, printed with two spaces between left-aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    // Padded by hand: `{:<w$}` panics for a width above u16::MAX, and a cell
                    // (a worker's STATUS= text, a name from an older release) may be that long.
                    line.push_str(cell);
                    let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["slot", "pid"]);
        t.row(vec!["0".into(), "12345".into()]);
        t.row(vec!["10".into(), "7".into()]);
        assert_eq!(t.to_string(), "slot  pid\n0     12345\n10    7\n");
    }

    #[test]
    fn a_cell_longer_than_any_format_width_is_printed_whole() {
        let long = "n".repeat(100_000);
        let mut t = Table::new(&["name", "pid"]);
        t.row(vec![long.clone(), "1".into()]);
        t.row(vec!["a".into(), "2".into()]);
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], format!("{long}  1"));
        assert_eq!(lines[2].len(), long.len() + 3);
        assert!(lines[2].starts_with("a ") && lines[2].ends_with("  2"));
    }
}

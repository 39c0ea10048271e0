"""Benchmarks: rates measured side by side in one run, printed as tables (never timed assertions)."""


def results_table(title: str, columns: tuple[str, ...], rows: list[tuple], first_left: bool = True):
    """A rich table of measurements: numbers right-aligned, the first column (the measurement's name) left.

    Args:
        first_left: left-align the first column; False: every column right-aligned.
    """
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if first_left and i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table

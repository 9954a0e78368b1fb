"""The paper's experiments as grids of real training runs: prompt length x initializer x seed (x model)."""

"""Layer tables, parameter and MAC counting, and the case studies' cost formulas."""

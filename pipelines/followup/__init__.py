"""Follow-up screening: a current scan read against its prior (pairs with known truth, comparison, growth)."""

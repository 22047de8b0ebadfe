"""Plans, prices, the credit ledger and usage (public schema). Built by the billing issue."""

"""CNPJ targets, checks and reports (tenant schema). Built by the checks issue."""

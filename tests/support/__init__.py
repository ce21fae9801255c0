"""Helpers shared by the integration and end-to-end tests: real VMs, real processes, a real RFB client."""

"""Test helpers: seeded data, throwaway servers, and processes tests run (`python -m tests.support.<module>`)."""

"""Benchmarks behind `fedkd bench ...`: they print figures; they are not tests."""

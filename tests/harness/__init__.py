"""Tests of the test harness itself: held ports, and the test command's set-up."""

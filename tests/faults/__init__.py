"""The fault suite: one test per way bad input or a crash could lose or corrupt work (issue #14).

Each test builds the bad input, runs the real entry point, and asserts the refusal names the
file, line or field. Remove the check it guards and the test fails.
"""

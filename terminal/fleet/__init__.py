"""pos-fleet: many terminals against one host, for load tests and sign-on storms.

Pure cores (schedule, mix, stats, report, plot, member) and thin shells (runner on asyncio,
workers as processes, cli, the Locust user class), so the arithmetic is tested without sockets.
"""

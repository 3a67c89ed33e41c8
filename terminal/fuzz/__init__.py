"""pos-fuzz: a hostile terminal that throws valid and broken frames at a live host.

The mutation engine (`engine`), the oracles (`oracles`) and the shrinker (`shrink`) are pure;
`tcp` and `serial` are the only modules that touch a wire, and `runner` ties them together.
"""

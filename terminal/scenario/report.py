"""A scenario run as a person reads it, as one JSON document, and as JUnit XML for CI systems."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from xml.etree import ElementTree as ET

from protocol import ladder
from terminal.scenario.runner import ScenarioResult


def result_data(result: ScenarioResult) -> dict[str, Any]:
    s = result.scenario
    return {
        "name": s.name, "cause": s.cause, "reason": s.reason, "passed": result.passed,
        "seconds": round(result.seconds, 2), "error": result.error,
        "steps": [asdict(step) for step in result.steps],
        "ladder": [asdict(r) for r in result.rungs],
    }


def result_lines(result: ScenarioResult, with_ladder: bool) -> list[str]:
    s = result.scenario
    verdict = "PASS" if result.passed else "FAIL"
    what = f"{s.cause} ({s.reason})" if s.cause else s.summary.split(":")[0]
    lines = [f"{verdict}  {s.name}: {what}  {result.seconds:.1f} s"]
    for step in result.steps:
        if step.label.startswith("setup:") and step.passed:
            continue
        mark = "ok  " if step.passed else "FAIL"
        remedy = "  [remedy]" if step.remedy else ""
        lines.append(f"  {mark} {step.index:>2}. {step.label}{remedy}{_said(step.output)}")
        lines.extend(f"          {difference}" for difference in step.differences)
    if result.error:
        lines.append(f"  error: {result.error}")
    if with_ladder:
        lines.extend("  " + row for row in ladder.text(result.rungs).splitlines())
    return lines


def _said(output: Any) -> str:
    """The one thing a step showed: its code and reason, or the diagnosis's cause and first fix."""
    if not isinstance(output, dict):
        return ""
    if "fixes" in output and output.get("fixes"):
        return f"  -> {output.get('cause')}; first fix: {output['fixes'][0][:60]}"
    if output.get("rc"):
        reason = f" {output['reason']}" if output.get("reason") else ""
        return f"  -> {output['rc']}{reason}"
    if output.get("killed"):
        return "  -> killed"
    return ""


def junit(results: list[ScenarioResult]) -> bytes:
    failures = sum(not r.passed for r in results)
    suites = ET.Element("testsuites", tests=str(len(results)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="pos-scenario", tests=str(len(results)),
                          failures=str(failures),
                          time=f"{sum(r.seconds for r in results):.2f}")
    for result in results:
        case = ET.SubElement(suite, "testcase", classname="pos-scenario.catalogue",
                             name=result.scenario.name, time=f"{result.seconds:.2f}")
        if not result.passed:
            failed = [s for s in result.steps if not s.passed]
            message = result.error or "; ".join(
                f"step {s.index} {s.label}: {', '.join(s.differences)}" for s in failed)
            failure = ET.SubElement(case, "failure", message=message[:500])
            failure.text = "\n".join(result_lines(result, with_ladder=True))
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(result_lines(result, with_ladder=True))
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)

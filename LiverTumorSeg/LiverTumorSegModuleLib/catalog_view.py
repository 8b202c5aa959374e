"""What the model selectors show: one entry per catalogue model or model file, with its state and tool tip."""

from __future__ import annotations

from slicer.i18n import tr as _

from .parameters import CATALOG_PREFIX


def modelChoices(models: list) -> list[dict]:
    """What the model selectors show: text, data (path or "catalog:<id>"), enabled, tool tip."""
    choices = []
    for m in models:
        entry = m.entry
        lines = [str(m.path)]
        if entry is not None:
            lines = [entry.description, _("Labels: {labels}").format(labels=", ".join(entry.labels)),
                     _("Version {version}; licence: {licence}").format(version=entry.version,
                                                                     licence=entry.licence)]
            if entry.seconds_cpu is not None or entry.seconds_gpu is not None:
                lines.append(_("Measured time per CT: CPU {cpu} s, GPU {gpu} s ({hardware})").format(
                    cpu=entry.seconds_cpu, gpu=entry.seconds_gpu, hardware=entry.hardware))
        elif m.config is not None:
            lines.append(_("Labels: {labels}").format(labels=", ".join(lab.name for lab in m.config.labels)))
        text, data, enabled = m.title, str(m.path), True
        if m.installed and not m.usable:
            text, enabled = _("{title} (unusable)").format(title=m.title), False
            lines.insert(0, m.problem)
        elif not m.installed and entry is not None and entry.url:
            text, data = _("{title} (downloads on Apply)").format(title=m.title), CATALOG_PREFIX + entry.id
        elif not m.installed:
            text, enabled = _("{title} (not installed)").format(title=m.title), False
            lines.insert(0, _("Not installed and no download address: import its file {file}").format(
                file=entry.file if entry else m.path.name))
        choices.append({"text": text, "data": data, "enabled": enabled,
                        "toolTip": "\n".join(line for line in lines if line), "default": bool(entry and
                                                                                               entry.default)})
    return choices

def defaultModelChoice(choices: list[dict]) -> str | None:
    return next((c["data"] for c in choices if c["default"] and c["enabled"]), None)

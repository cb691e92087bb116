#!/usr/bin/env python3
"""Generate a synthetic kiln repo (a "fleet") for benchmarking `kiln check`.

    gen_fleet.py OUTDIR [--hosts 1000] [--modules 200] [--imports 20] [--seed 1]

The output is deterministic for a given set of arguments. Everything in it is
meant to be valid, so `kiln --repo OUTDIR check` passes:

* modules `m000`..: each declares five options of mixed types under its own
  group (`m007.port`, `m007.paths`, ...), all with defaults, and sets some
  built-in config (packages, sysctl, files with `${...}` interpolation,
  systemd units, sometimes a user). About a third import one or two
  lower-numbered modules, so imports are transitive but never cyclic.
* hosts `host0001`..: each imports `--imports` distinct modules and sets a
  few options of modules it imports directly. Hosts only set options that
  no module sets at `[config]`/`[force]` priority (or list options, which
  concatenate), so no two definitions conflict.
* one image (`debian-12`) and a `lockfile.toml`.

Prints a one-line summary (hosts, modules, files, bytes) on stdout.
"""

import argparse
import os
import random
import shutil
import sys

# Option kinds a module may declare besides the two every module has
# (`port` and `paths`). name -> (type line(s), default as TOML).
EXTRA_KINDS = ["name", "workers", "enabled", "mode", "cache", "timeout", "token", "labels", "tags"]
MODES = ["fast", "safe", "off"]
HOST_SETTABLE = ["port", "workers", "mode", "cache", "timeout", "paths", "tags", "labels"]


def q(s):
    """A TOML basic string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def toml_list(items):
    return "[" + ", ".join(q(i) for i in items) + "]"


class Module:
    def __init__(self, index, rng, all_modules):
        self.index = index
        self.name = "m%03d" % index
        self.options = ["port", "paths"] + sorted(rng.sample(EXTRA_KINDS, 3), key=EXTRA_KINDS.index)
        self.imports = []
        if index > 0 and rng.random() < 0.35:
            count = min(index, rng.choice([1, 1, 2]))
            self.imports = sorted(rng.sample(range(index), count))
        # Options this module sets itself at [config] or [force] priority: a
        # host must not set them to a different scalar.
        self.forced = set()
        self.set_in_config = set()
        self.rng_state = rng.random()
        self.all_modules = all_modules

    def closure(self):
        seen = set()
        stack = [self.index]
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(self.all_modules[i].imports)
        return seen

    def render(self, rng):
        g = self.name
        n = self.index
        out = []
        out.append("[module]")
        out.append("description = %s" % q("synthetic benchmark module %d" % n))
        if self.imports:
            out.append("imports = %s" % toml_list(["m%03d" % i for i in self.imports]))
        out.append("")

        def decl(opt, lines, description):
            out.append("[options.%s.%s]" % (g, opt))
            out.extend(lines)
            out.append("description = %s" % q(description))
            out.append("")

        for opt in self.options:
            if opt == "port":
                decl(opt, ['type = "port"', "default = %d" % (9000 + n)], "port of %s" % g)
            elif opt == "paths":
                decl(opt, ['type = "list<path>"', "default = []"], "paths %s works on" % g)
            elif opt == "name":
                decl(opt, ['type = "string"', 'pattern = "[a-z0-9-]+"', "default = %s" % q("svc-${hostname}-%s" % g)],
                     "service name of %s" % g)
            elif opt == "workers":
                decl(opt, ['type = "int"', "min = 1", "max = 64", "default = %d" % rng.randint(1, 16)],
                     "worker count of %s" % g)
            elif opt == "enabled":
                decl(opt, ['type = "bool"', "default = false"], "whether %s runs" % g)
            elif opt == "mode":
                decl(opt, ['type = "enum"', "values = %s" % toml_list(MODES), "default = %s" % q(rng.choice(MODES))],
                     "mode of %s" % g)
            elif opt == "cache":
                decl(opt, ['type = "size"', "default = %s" % q("%dMiB" % (16 * rng.randint(1, 32)))],
                     "cache size of %s" % g)
            elif opt == "timeout":
                decl(opt, ['type = "duration"', "default = %s" % q("%ds" % rng.randint(5, 120)),
                           'example = "1h30m"'], "timeout of %s" % g)
            elif opt == "token":
                decl(opt, ['type = "secret"', "default = %s" % q("vault:kv/bench/%s#token" % g)],
                     "where the API token of %s lives" % g)
            elif opt == "labels":
                decl(opt, ['type = "map<string>"', "default = {}"], "labels of %s" % g)
            elif opt == "tags":
                decl(opt, ['type = "list<string>"', 'pattern = "[a-z][a-z0-9-]*"', "default = []"],
                     "tags of %s" % g)

        # [defaults]: same value everywhere, so equal-priority definitions agree.
        if n % 5 == 0:
            out.append("[defaults]")
            out.append('timezone = "Europe/Berlin"')
            out.append("")

        # [force]: a module forces its own `enabled` on (hosts never set it).
        if "enabled" in self.options:
            out.append("[force]")
            out.append("%s.enabled = true" % g)
            out.append("")
            self.forced.add("enabled")

        out.append("[config]")
        out.append("packages = %s" % toml_list(["pkg-%s" % g] + (["pkg-%s-extra" % g] if n % 3 == 0 else [])))
        out.append("%s.paths = %s" % (g, toml_list(["/srv/%s" % g, "/var/lib/%s" % g])))
        if "tags" in self.options:
            out.append("%s.tags = %s" % (g, toml_list(["bench", g])))
        if "labels" in self.options:
            out.append("%s.labels.owner = %s" % (g, q(g)))
            self.set_in_config.add("labels.owner")
        out.append("systemd.enable = %s" % toml_list(["%s.service" % g]))
        out.append('sysctl."net.core.bench_%s" = "%d"' % (g, n))
        out.append("")

        # A file whose text interpolates this module's options, the hostname
        # and, when it imports one, an option of an imported module.
        refs = ["port=${%s.port}" % g, "host=${hostname}"]
        for opt in ("name", "workers", "mode", "cache", "timeout", "enabled"):
            if opt in self.options:
                refs.append("%s=${%s.%s}" % (opt, g, opt))
        if self.imports:
            dep = "m%03d" % self.imports[0]
            refs.append("upstream=${%s.port}" % dep)
        out.append('[config.files."/etc/%s/%s.conf"]' % (g, g))
        out.append("text = %s" % q("\n".join(refs) + "\n"))
        out.append('mode = "0640"')
        out.append("")

        if n % 4 == 0:
            out.append('[config.systemd.units."%s-sync.timer"]' % g)
            out.append("text = %s" % q("[Timer]\nOnCalendar=daily\n"))
            out.append("")

        if n % 7 == 0:
            out.append("[config.users.%s]" % g)
            out.append("uid = %d" % (20000 + n))
            out.append("system = true")
            out.append('shell = "/usr/sbin/nologin"')
            out.append("home = %s" % q("/var/lib/%s" % g))
            out.append("")

        return "\n".join(out)


def host_value(module, opt, rng, hostname):
    g = module.name
    if opt == "port":
        return "%s.port = %d" % (g, rng.randint(20000, 60000))
    if opt == "workers":
        return "%s.workers = %d" % (g, rng.randint(1, 64))
    if opt == "mode":
        return "%s.mode = %s" % (g, q(rng.choice(MODES)))
    if opt == "cache":
        return "%s.cache = %s" % (g, q("%dGiB" % rng.randint(1, 8)))
    if opt == "timeout":
        return "%s.timeout = %s" % (g, q("%dm%ds" % (rng.randint(1, 9), rng.randint(0, 59))))
    if opt == "paths":
        return "%s.paths = %s" % (g, toml_list(["/srv/%s/%s" % (hostname, g)]))
    if opt == "tags":
        return "%s.tags = %s" % (g, toml_list([hostname]))
    if opt == "labels":
        return "%s.labels.host = %s" % (g, q(hostname))
    raise AssertionError(opt)


def render_host(index, modules, imports, rng):
    name = "host%04d" % index
    out = []
    out.append("[host]")
    out.append("description = %s" % q("synthetic benchmark host %d" % index))
    out.append('kind = "%s"' % ("vm" if index % 10 == 0 else "lxc"))
    out.append('image = "debian-12"')
    out.append('node = "pve%d"' % (1 + index % 8))
    out.append("vmid = %d" % (1000 + index))
    out.append("imports = %s" % toml_list(["m%03d" % i for i in imports]))
    out.append("")
    out.append("[host.resources]")
    out.append("cores = %d" % rng.choice([1, 2, 4, 8]))
    out.append('memory = "%dGiB"' % rng.choice([1, 2, 4, 8, 16]))
    out.append("")
    out.append("[host.network.interfaces.eth0]")
    a, b = divmod(index, 250)
    out.append('address = ["10.%d.%d.%d/16"]' % (1 + a // 250, a % 250, b + 2))
    out.append('gateway = "10.%d.0.1"' % (1 + a // 250))
    out.append("")
    out.append("[config]")
    out.append("proxmox.tags = %s" % toml_list(["bench", "rack%d" % (index % 16)]))
    out.append("packages = %s" % toml_list(["pkg-%s" % name]))
    chosen = rng.sample(imports, min(4, len(imports)))
    for i in chosen:
        m = modules[i]
        settable = [o for o in HOST_SETTABLE if o in m.options and o not in m.forced]
        for opt in rng.sample(settable, min(2, len(settable))):
            out.append(host_value(m, opt, rng, name))
    out.append("")
    return name, "\n".join(out)


IMAGE = """[image]
description = "bench image"
formats = ["lxc", "vm"]

[image.base.debian]
suite = "bookworm"
"""

LOCKFILE = """# synthetic fleet for benches/check_fleet.sh
version = 1
"""


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--modules", type=int, default=200)
    p.add_argument("--imports", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--force", action="store_true", help="replace OUTDIR's hosts/, images/, modules/ if present")
    args = p.parse_args(argv)
    if args.hosts < 1 or args.hosts > 9999:
        p.error("--hosts must be 1..9999 (host names are host0001..host9999)")
    if args.modules < 1 or args.modules > 999:
        p.error("--modules must be 1..999")
    if args.imports < 1 or args.imports > args.modules:
        p.error("--imports must be 1..--modules")

    rng = random.Random(args.seed)
    out = args.outdir
    os.makedirs(out, exist_ok=True)
    for sub in ("hosts", "images", "modules"):
        d = os.path.join(out, sub)
        if os.path.exists(d):
            if not args.force and os.listdir(d):
                p.error("%s exists and is not empty (use --force)" % d)
            shutil.rmtree(d)
        os.makedirs(d)

    total_bytes = 0
    files = 0

    def write(rel, text):
        nonlocal total_bytes, files
        data = text.encode()
        with open(os.path.join(out, rel), "wb") as f:
            f.write(data)
        total_bytes += len(data)
        files += 1

    write("lockfile.toml", LOCKFILE)
    write("images/debian-12.toml", IMAGE)

    modules = []
    for i in range(args.modules):
        modules.append(Module(i, rng, modules))
    for m in modules:
        write("modules/%s.toml" % m.name, m.render(rng))

    closure_sizes = []
    for h in range(1, args.hosts + 1):
        imports = sorted(rng.sample(range(args.modules), args.imports))
        closure = set()
        for i in imports:
            closure |= modules[i].closure()
        closure_sizes.append(len(closure))
        name, text = render_host(h, modules, imports, rng)
        write("hosts/%s.toml" % name, text)

    avg_closure = sum(closure_sizes) / len(closure_sizes)
    print("fleet: %d hosts, %d modules, %d imports/host (%.1f with transitive imports), %d files, %d TOML bytes"
          % (args.hosts, args.modules, args.imports, avg_closure, files, total_bytes))


if __name__ == "__main__":
    main(sys.argv[1:])

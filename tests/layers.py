#!/usr/bin/env python3
"""Each file's `use crate::` imports (tests excluded): no import circles, and
nothing importing a layer above its own (ARCHITECTURE.md, "The modules, by
layer"). And no file over 500 lines of code (non-blank, not a `//` comment,
its trailing `#[cfg(test)] mod tests` left out; a `tests.rs` is all tests),
but the SIMD kernels. Run from the repository root:
python3 tests/layers.py [src] [-v]."""
import os, re, sys
args = [a for a in sys.argv[1:] if a != '-v']
root = args[0] if args else 'src'
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            m = os.path.relpath(p, root)[:-3]
            files[m] = p
def modname(m):
    m = m.replace('/mod', '')
    return m
mods = {modname(m): p for m, p in files.items()}
def resolve(path):
    parts = path.split('::')
    for i in range(len(parts), 0, -1):
        cand = '/'.join(parts[:i])
        if cand in mods: return cand
    return None
edges = {}
for m, p in mods.items():
    if m.endswith('tests') or m == 'lib' or m == 'main': pass
    src = open(p).read()
    # drop #[cfg(test)] mod tests { ... } blocks at the end
    i = src.find('#[cfg(test)]\nmod tests {')
    if i >= 0: src = src[:i]
    src = '\n'.join(l for l in src.split('\n') if not l.lstrip().startswith('//'))
    deps = set()
    for um in re.finditer(r'\buse crate::([^;]+);', src, re.S):
        body = um.group(1)
        body = re.sub(r'\s+', '', body)
        # expand braces one level deep
        def expand(prefix, s):
            out = []
            if '{' not in s:
                return [prefix + s]
            head, rest = s.split('{', 1)
            inner = rest[:rest.rfind('}')]
            depth = 0; cur = ''; items = []
            for ch in inner:
                if ch == '{': depth += 1
                if ch == '}': depth -= 1
                if ch == ',' and depth == 0: items.append(cur); cur = ''
                else: cur += ch
            if cur: items.append(cur)
            for it in items: out += expand(prefix + head, it)
            return out
        for path in expand('', body):
            path = path.split(' as ')[0].rstrip(':')
            path = re.sub(r'::self$', '', path)
            r = resolve(path)
            if r and r != m: deps.add(r)
            if r and r.replace('/', '::') == path:
                alias = path.split('::')[-1]
                for am in re.finditer(r'(?<![:\w])' + alias + r'::([a-z_]+)', src):
                    r2 = resolve(path + '::' + am.group(1))
                    if r2 and r2 != m: deps.add(r2)
    for um in re.finditer(r'\bcrate::([a-z_]+(?:::[a-z_]+)*)', src):
        r = resolve(um.group(1))
        if r and r != m: deps.add(r)
    # super:: imports
    parent = '/'.join(m.split('/')[:-1]) if '/' in m else None
    for um in re.finditer(r'\bsuper::([a-z_]+)', src):
        if parent is not None:
            cand = parent + '/' + um.group(1)
            r = cand if cand in mods else parent
        else:
            r = None
        if r and r != m: deps.add(r)
    edges[m] = deps
# circles: strongly connected components
idx = {}; low = {}; st = []; on = set(); sccs = []; n = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        c = []
        while True:
            w = st.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: sccs.append(sorted(c))
for v in edges:
    if v not in idx: sc(v)
if '-v' in sys.argv:
    for m in sorted(edges): print(m, '->', ' '.join(sorted(edges[m])))
for c in sccs:
    print('circle:', ' '.join(c))
LAYERS = [
    ['main', 'lib', 'cli'],
    ['client', 'auto', 'server', 'local', 'ssh', 'remote_shell', 'patch', 'drives'],
    ['child'],
    ['session'],
    ['net', 'handshake', 'stdio'],
    ['reader', 'writer', 'pool', 'disk', 'mounts', 'rescue'],
    ['summary'],
    ['config', 'log', 'progress', 'units', 'patch/part'],
    ['auth', 'proto', 'compress', 'digest', 'block', 'patch/format', 'patch/spans'],
    ['aead', 'sha256', 'lock', 'error', 'sys'],
]
def layer(m):
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if m == n or m.startswith(n + '/'):
                if best is None or len(n) > best[1]: best = (i, len(n))
    return best[0] if best else None
up = []
for m, ds in edges.items():
    if m.endswith('tests'): continue
    for d in ds:
        lm, ld = layer(m), layer(d)
        if lm is None or ld is None: print('no layer:', m if lm is None else d); continue
        if ld < lm: up.append((m, d))
for m, d in sorted(up): print('upward:', m, '->', d)
MAX_LINES = 500
EXEMPT = {'sys/simd'}
def code_lines(p):
    src = open(p).read()
    i = src.find('#[cfg(test)]\nmod tests')
    if i >= 0: src = src[:i]
    return sum(1 for l in src.split('\n') if l.strip() and not l.lstrip().startswith('//'))
long = []
for m, p in sorted(files.items()):
    if m in EXEMPT or m == 'tests' or m.endswith('/tests'): continue
    n = code_lines(p)
    if n > MAX_LINES: long.append((m, n))
    if '-v' in sys.argv: print(n, p)
for m, n in long: print('too long: %s.rs has %d lines of code (at most %d)' % (m, n, MAX_LINES))
sys.exit(1 if sccs or up or long else 0)

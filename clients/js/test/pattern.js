// The conformance vectors' patterns and filling (docs/protocol.md,
// "Conformance vectors"), for the JS players.

function special(s) {
  if (typeof s !== 'string' || !s.startsWith('$')) return null;
  const rest = s.slice(1);
  if (rest === 'any') return { kind: 'any' };
  if (rest === 'absent') return { kind: 'absent' };
  if (rest.startsWith('$')) return { kind: 'literal', text: rest };
  return { kind: 'bind', name: rest };
}

function isObj(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Deep equality, numbers by value. */
export function same(a, b) {
  if (typeof a === 'number' && typeof b === 'number') return a === b;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (isObj(a) && isObj(b)) {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => k in b && same(a[k], b[k]));
  }
  return a === b;
}

const show = (v) => JSON.stringify(v);

function walk(p, a, b, path) {
  const sp = special(p);
  if (sp) {
    switch (sp.kind) {
      case 'any': return;
      case 'absent': throw new Error(`at ${path || '.'}: expected no value, got ${show(a)}`);
      case 'bind':
        if (sp.name in b) {
          if (!same(b[sp.name], a)) throw new Error(`at ${path || '.'}: $${sp.name} is bound to ${show(b[sp.name])}, got ${show(a)}`);
        } else {
          b[sp.name] = a;
        }
        return;
      default:
        if (a !== sp.text) throw new Error(`at ${path || '.'}: expected ${show(sp.text)}, got ${show(a)}`);
        return;
    }
  }
  if (isObj(p) && '$approx' in p) {
    if (typeof a !== 'number' || Math.abs(a - p.$approx) > p.tol) {
      throw new Error(`at ${path || '.'}: expected ${p.$approx} ± ${p.tol}, got ${show(a)}`);
    }
    return;
  }
  if (isObj(p)) {
    if (!isObj(a)) throw new Error(`at ${path || '.'}: expected an object, got ${show(a)}`);
    for (const [k, sub] of Object.entries(p)) {
      const at = `${path}.${k}`;
      const absent = special(sub)?.kind === 'absent';
      if (absent) {
        if (k in a) throw new Error(`at ${at}: expected no field, got ${show(a[k])}`);
      } else if (!(k in a)) {
        throw new Error(`at ${at}: missing (expected ${show(sub)})`);
      } else {
        walk(sub, a[k], b, at);
      }
    }
    return;
  }
  if (Array.isArray(p)) {
    if (!Array.isArray(a)) throw new Error(`at ${path || '.'}: expected an array, got ${show(a)}`);
    if (p.length !== a.length) throw new Error(`at ${path || '.'}: expected ${p.length} elements, got ${a.length}: ${show(a)}`);
    p.forEach((sub, i) => walk(sub, a[i], b, `${path}[${i}]`));
    return;
  }
  if (!same(p, a)) throw new Error(`at ${path || '.'}: expected ${show(p)}, got ${show(a)}`);
}

/** Matches `actual` against `pattern`; binds into `bindings` only on success. Throws with where it differs. */
export function check(pattern, actual, bindings) {
  const trial = { ...bindings };
  walk(pattern, actual, trial, '');
  Object.assign(bindings, trial);
}

/** Fills a `send` template. `extra(obj)` handles objects like {"$token": ...} (returns undefined when not its). */
export function fill(t, b, extra = () => undefined) {
  const sp = special(t);
  if (sp) {
    if (sp.kind === 'bind') {
      if (!(sp.name in b)) throw new Error(`$${sp.name} is not bound yet`);
      return b[sp.name];
    }
    if (sp.kind === 'literal') return sp.text;
    throw new Error(`${t} is a pattern, not a value to send`);
  }
  if (isObj(t)) {
    if ('$repeat' in t) return String(t.$repeat).repeat(t.times);
    if ('$join' in t) return t.$join.map((part) => { const v = fill(part, b, extra); return typeof v === 'string' ? v : JSON.stringify(v); }).join('');
    const x = extra(t);
    if (x !== undefined) return x;
    return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, fill(v, b, extra)]));
  }
  if (Array.isArray(t)) return t.map((v) => fill(v, b, extra));
  return t;
}

#!/usr/bin/python3
"""check_meta.py: META.json against the PGXN Meta Spec 1.0.0, and against the tree.

    /usr/bin/python3 scripts/check_meta.py [META.json]

The spec's rules (https://pgxn.org/meta/spec.txt): the required keys and
their types, no unknown keys but x_ ones, SemVer versions, terms, licenses,
prereq phases, relationships and version ranges, tags, no_index.  The tree's:
the version is the control file's default_version (as SemVer: 1.0 is 1.0.0),
every extension provided has a control file, and the files named exist.
The licence's: LICENSE is the licence META.json names, with the text and
the copyright notice of debian/copyright (the file the Debian package
carries it in), so that the three say the same.
Prints every problem and exits 1 if there is one.
"""
import json
import os
import re
import sys

SEMVER = r'(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?'
RANGE_ITEM = r'((==|!=|<=|>=|<|>)\s*)?' + SEMVER
RANGE = re.compile(r'^(0|' + RANGE_ITEM + r'(\s*,\s*' + RANGE_ITEM + r')*)$')
TERM = re.compile(r'^[^/\\\s\x00-\x1f\x7f]{2,}$')
TAG = re.compile(r'^[^/\\\x00-\x1f\x7f]{2,255}$')
LICENSES = {'agpl_3', 'apache_1_1', 'apache_2_0', 'artistic_1', 'artistic_2', 'bsd', 'freebsd', 'gfdl_1_2',
            'gfdl_1_3', 'gpl_1', 'gpl_2', 'gpl_3', 'lgpl_2_1', 'lgpl_3_0', 'mit', 'mozilla_1_0', 'mozilla_1_1',
            'openssl', 'perl_5', 'postgresql', 'qpl_1_0', 'ssleay', 'sun', 'zlib', 'open_source', 'restricted',
            'unrestricted', 'unknown'}
TOP_KEYS = {'name', 'version', 'abstract', 'maintainer', 'license', 'provides', 'meta-spec', 'description',
            'generated_by', 'tags', 'no_index', 'prereqs', 'release_status', 'resources'}
REQUIRED = ['name', 'version', 'abstract', 'maintainer', 'license', 'provides', 'meta-spec']

problems = []


def problem(where, what):
    problems.append(f'{where}: {what}')


def nonempty_string(value):
    return isinstance(value, str) and value != ''


def check_keys(where, obj, allowed, required=()):
    if not isinstance(obj, dict) or not obj:
        problem(where, 'must be a non-empty object')
        return False
    for key in obj:
        if key not in allowed and not re.match(r'^[xX]_.', key):
            problem(where, f'unknown key "{key}" (custom keys start with x_)')
    for key in required:
        if key not in obj:
            problem(where, f'missing required key "{key}"')
    return True


def check_semver(where, value):
    if not isinstance(value, str) or not re.fullmatch(SEMVER, value):
        problem(where, f'{value!r} is not a semantic version (major.minor.patch)')


def check_paths(where, value):
    for path in value if isinstance(value, list) else [value]:
        if not nonempty_string(path) or path.startswith('/') or '\\' in path:
            problem(where, f'{path!r} is not a relative unix path')


def check_spec(meta):
    if not check_keys('META.json', meta, TOP_KEYS, REQUIRED):
        return
    if not (isinstance(meta.get('name'), str) and TERM.match(meta['name'])):
        problem('name', 'must be a term: 2 or more characters, no slash, backslash, space or control character')
    check_semver('version', meta.get('version'))
    for key in ('abstract', 'description', 'generated_by'):
        if key in meta and not nonempty_string(meta[key]):
            problem(key, 'must be a non-empty string')
    maintainer = meta.get('maintainer')
    if not (nonempty_string(maintainer) or (isinstance(maintainer, list) and maintainer
                                            and all(nonempty_string(m) for m in maintainer))):
        problem('maintainer', 'must be a string or a non-empty list of strings')
    lic = meta.get('license')
    if isinstance(lic, str):
        lic = [lic]
    if isinstance(lic, list):
        if not lic or any(item not in LICENSES for item in lic):
            problem('license', f'{meta["license"]!r}: use the spec\'s names (postgresql, mit, ...) or an object of URLs')
    elif not (isinstance(lic, dict) and lic and all(nonempty_string(v) for v in lic.values())):
        problem('license', 'must be a license name, a list of them, or an object of names to URLs')
    if check_keys('meta-spec', meta.get('meta-spec'), {'version', 'url'}, ['version']):
        if not re.fullmatch(r'1\.0\.\d+', str(meta['meta-spec'].get('version'))):
            problem('meta-spec.version', 'must be 1.0.x')
        if meta['meta-spec'].get('url', 'https://pgxn.org/meta/spec.txt') not in (
                'https://pgxn.org/meta/spec.txt', 'http://pgxn.org/meta/spec.txt'):
            problem('meta-spec.url', 'must be https://pgxn.org/meta/spec.txt')
    provides = meta.get('provides')
    if isinstance(provides, dict) and provides:
        for ext, spec in provides.items():
            where = f'provides.{ext}'
            if not TERM.match(ext):
                problem(where, 'the extension name must be a term')
            if check_keys(where, spec, {'file', 'version', 'abstract', 'docfile'}, ['file', 'version']):
                check_semver(f'{where}.version', spec.get('version'))
                for key in ('file', 'docfile'):
                    if key in spec:
                        check_paths(f'{where}.{key}', spec[key])
                if 'abstract' in spec and not nonempty_string(spec['abstract']):
                    problem(f'{where}.abstract', 'must be a non-empty string')
    else:
        problem('provides', 'must be a non-empty object')
    if 'prereqs' in meta and check_keys('prereqs', meta['prereqs'], {'configure', 'build', 'test', 'runtime', 'develop'}):
        for phase, relations in meta['prereqs'].items():
            if not check_keys(f'prereqs.{phase}', relations, {'requires', 'recommends', 'suggests', 'conflicts'}):
                continue
            for relation, prereqs in relations.items():
                where = f'prereqs.{phase}.{relation}'
                if not isinstance(prereqs, dict) or not prereqs:
                    problem(where, 'must be a non-empty object')
                    continue
                for name, version in prereqs.items():
                    if not TERM.match(name):
                        problem(where, f'{name!r} is not a term')
                    if not (version == 0 or (isinstance(version, str) and RANGE.match(version))):
                        problem(f'{where}.{name}', f'{version!r} is not a version range')
    if 'release_status' in meta and meta['release_status'] not in ('stable', 'testing', 'unstable'):
        problem('release_status', 'must be stable, testing or unstable')
    if 'tags' in meta:
        tags = meta['tags']
        if not (isinstance(tags, list) and tags and all(isinstance(t, str) and TAG.match(t) for t in tags)):
            problem('tags', 'must be a non-empty list of 2 to 255 characters without slash, backslash or control characters')
    if 'no_index' in meta and check_keys('no_index', meta['no_index'], {'file', 'directory'}):
        for key, paths in meta['no_index'].items():
            check_paths(f'no_index.{key}', paths)
    if 'resources' in meta and check_keys('resources', meta['resources'], {'homepage', 'bugtracker', 'repository'}):
        for key in ('bugtracker', 'repository'):
            if key in meta['resources']:
                check_keys(f'resources.{key}', meta['resources'][key],
                           {'web', 'mailto'} if key == 'bugtracker' else {'url', 'web', 'type'})


def check_tree(meta, root):
    control = os.path.join(root, 'connect_guard.control')
    with open(control) as f:
        found = re.search(r"^default_version\s*=\s*'([^']*)'", f.read(), re.M)
    if not found:
        problem('connect_guard.control', 'no default_version')
        return
    # SemVer wants three numbers: the control file's 1.0 is 1.0.0
    version = found.group(1) + '.0' * (2 - found.group(1).count('.'))
    if meta.get('version') != version:
        problem('version', f'{meta.get("version")!r}, but connect_guard.control says {found.group(1)!r} ({version})')
    for ext, spec in (meta.get('provides') or {}).items():
        if not os.path.exists(os.path.join(root, f'{ext}.control')):
            problem(f'provides.{ext}', f'no {ext}.control in the tree')
        if isinstance(spec, dict):
            if spec.get('version') != version:
                problem(f'provides.{ext}.version', f'{spec.get("version")!r}, but the control file says {version}')
            for key in ('file', 'docfile'):
                if isinstance(spec.get(key), str) and not os.path.exists(os.path.join(root, spec[key])):
                    problem(f'provides.{ext}.{key}', f'{spec[key]} does not exist')
    for paths in (meta.get('no_index') or {}).values():
        for path in paths if isinstance(paths, list) else [paths]:
            if isinstance(path, str) and not os.path.exists(os.path.join(root, path)):
                problem('no_index', f'{path} does not exist')


# META.json's licence names (the spec's) and their names in LICENSE's first
# line and in debian/copyright (DEP-5 short names)
LICENSE_NAMES = {'postgresql': ('PostgreSQL License', 'PostgreSQL')}


def dep5_paragraphs(text):
    """debian/copyright's paragraphs, each {field: value}; continuation lines
    joined with newlines, a lone "." an empty line (DEP-5)."""
    paragraphs = []
    for block in re.split(r'\n\s*\n', text.strip()):
        fields, key = {}, None
        for line in block.split('\n'):
            if line[:1] in (' ', '\t') and key:
                fields[key] += '\n' + ('' if line.strip() == '.' else line.strip())
            elif ':' in line:
                key, value = line.split(':', 1)
                fields[key] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def check_license(meta, root):
    names = LICENSE_NAMES.get(meta.get('license')) if isinstance(meta.get('license'), str) else None
    if not names:
        problem('license', f'{meta.get("license")!r}: no LICENSE text is known for it here (LICENSE_NAMES)')
        return
    title, dep5_name = names
    try:
        with open(os.path.join(root, 'LICENSE')) as f:
            license_text = f.read()
        with open(os.path.join(root, 'debian', 'copyright')) as f:
            copyright_text = f.read()
    except OSError as e:
        problem('LICENSE', str(e))
        return
    found = re.match(r'([^\n]*)\n\nCopyright \(c\) (\d{4}(?:-\d{4})?), ([^\n]+)\n\n(.*?)\n*$', license_text, re.S)
    if not found:
        problem('LICENSE', 'must be: its title, a blank line, "Copyright (c) YEAR, HOLDER", a blank line, the text')
        return
    if found.group(1) != title:
        problem('LICENSE', f'its title is {found.group(1)!r}: META.json says {meta["license"]!r} ({title})')
    paragraphs = dep5_paragraphs(copyright_text)
    files = next((p for p in paragraphs if p.get('Files') == '*'), {})
    if files.get('License') != dep5_name:
        problem('debian/copyright', f'"Files: *" has License {files.get("License")!r}, not {dep5_name!r} as META.json says')
    notice = f'{found.group(2)} {found.group(3)}'
    if files.get('Copyright') != notice:
        problem('debian/copyright', f'"Files: *" has Copyright {files.get("Copyright")!r}; LICENSE says {notice!r}')
    text = next((p['License'] for p in paragraphs if 'Files' not in p and p.get('License', '').startswith(dep5_name + '\n')), None)
    if text is None:
        problem('debian/copyright', f'no stand-alone "License: {dep5_name}" paragraph with its text')
    elif text.split('\n', 1)[1] != found.group(4):
        problem('LICENSE', f'its text differs from the "License: {dep5_name}" paragraph of debian/copyright')


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), '..', 'META.json')
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        print(f'{path}: {e}', file=sys.stderr)
        return 1
    check_spec(meta)
    if isinstance(meta, dict):
        check_tree(meta, os.path.dirname(os.path.abspath(path)))
        check_license(meta, os.path.dirname(os.path.abspath(path)))
    for p in problems:
        print(f'{path}: {p}', file=sys.stderr)
    if not problems:
        print(f'{path}: valid (PGXN Meta Spec 1.0.0), version {meta["version"]} as in connect_guard.control,'
              ' licence as in LICENSE and debian/copyright')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())

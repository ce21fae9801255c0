// build.mjs - the console pages as the broker serves them: `npm run build` (or
// `node build.mjs [--outdir DIR]`) writes dist/ (never committed):
//
//   dist/pages/NAME.html   one per public/NAME.html: the page's template, its stylesheets
//                          and scripts replaced by the bundles below as {{static}}/FILE
//   dist/static/FILE       content-hashed bundles: per page one minified module script
//                          (its imports, noVNC or xterm.js included), one stylesheet,
//                          its classic scripts, the fonts and images they use; each
//                          with .gz and .br beside it when those are smaller
//   dist/licenses/         the license texts of every npm package in a bundle
//   dist/manifest.json     what the broker reads (broker/web/assets.py)
//
// A page declares what it needs in its HTML, as before bundling: <link rel="stylesheet">
// and <script src> tags whose URLs point at the static files ({{static}}/x, or the old
// relative ../../static/x). static/novnc/... and static/xterm/... name files of the npm
// packages (node_modules/@novnc/novnc/..., node_modules/@xterm/...), the rest files in
// public/; the modules' own imports of ./novnc/... and ./xterm/... resolve the same way.
// Other URLs (https:, data:) are left alone. Every public/*.html is a page.
//
// Writes are safe for a broker serving dist/ meanwhile: new files first, the manifest
// (atomically) after, unreferenced files last.

import * as esbuild from 'esbuild';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const WEB = path.dirname(fileURLToPath(import.meta.url));
const PUBLIC = path.join(WEB, 'public');
const MODULES = path.join(WEB, 'node_modules');
// URL prefixes under static/ that name npm packages' files (what the broker served
// unbundled from node_modules before).
const PACKAGE_PREFIXES = { 'novnc/': '@novnc/novnc/', 'xterm/': '@xterm/' };
// Types worth precompressing; fonts and images are compressed already.
// Source maps are fetched only by a browser's developer tools: not worth the time.
const COMPRESSIBLE = new Set(['.js', '.css', '.svg', '.json', '.txt']);
// An asset reference in a page: {{static}}/x, or any number of ../ then static/x.
const STATIC_URL = /^(?:\{\{static\}\}|(?:\.\.\/)*static)\/(.+)$/;

function parseArgs(argv) {
    const options = { outdir: path.join(WEB, 'dist'), quiet: false };
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === '--outdir') options.outdir = path.resolve(argv[++i]);
        else if (argv[i] === '--quiet') options.quiet = true;
        else throw new Error(`unknown argument ${argv[i]} (usage: node build.mjs [--outdir DIR] [--quiet])`);
    }
    return options;
}

/** The file behind a static URL's path (novnc/core/rfb.js, console.css, ...). */
function staticSource(rest) {
    for (const [prefix, pkg] of Object.entries(PACKAGE_PREFIXES)) {
        if (rest.startsWith(prefix)) return path.join(MODULES, pkg, rest.slice(prefix.length));
    }
    return path.join(PUBLIC, rest);
}

// The pages' modules import noVNC and xterm.js as ./novnc/... and ./xterm/... (URLs the
// broker once served from node_modules): resolve those to the packages' files.
const staticImports = {
    name: 'static-imports',
    setup(build) {
        build.onResolve({ filter: /^\.\/(novnc|xterm)\// }, (args) => {
            if (path.dirname(args.importer) !== PUBLIC) return undefined;
            return { path: staticSource(args.path.slice(2)) };
        });
    },
};

// A page's stylesheets, bundled as one: the virtual entry page-styles:NAME @imports them.
const pageStyles = new Map();
const pageStylesheets = {
    name: 'page-styles',
    setup(build) {
        build.onResolve({ filter: /^page-styles:/ }, (args) => ({ path: args.path, namespace: 'page-styles' }));
        build.onLoad({ filter: /.*/, namespace: 'page-styles' }, (args) => ({
            contents: pageStyles.get(args.path.slice('page-styles:'.length)),
            loader: 'css',
            resolveDir: PUBLIC,
        }));
    },
};

/** A page's asset tags: stylesheets, module scripts and classic scripts, in order. */
function pageAssets(name, html) {
    const tags = [];
    const tag = /<link\b[^>]*>|<script\b[^>]*>\s*<\/script>/g;
    for (const match of html.matchAll(tag)) {
        const text = match[0];
        const attr = (key) => (text.match(new RegExp(`\\b${key}="([^"]*)"`)) || [])[1];
        const isLink = text.startsWith('<link');
        if (isLink && attr('rel') !== 'stylesheet') continue;
        const url = isLink ? attr('href') : attr('src');
        const local = url && url.match(STATIC_URL);
        if (!local) continue;
        const kind = isLink ? 'style' : attr('type') === 'module' ? 'module' : 'classic';
        const source = staticSource(local[1]);
        if (!fs.existsSync(source)) throw new Error(`public/${name}.html: ${url} names ${path.relative(WEB, source)}, which does not exist`);
        tags.push({ text, kind, source });
    }
    if (tags.filter((t) => t.kind === 'module').length > 1) {
        throw new Error(`public/${name}.html: more than one module script (import the others from the first)`);
    }
    return tags;
}

/** The npm packages (name, version, license, root) whose files an output was built from. */
function packagesOf(inputs) {
    const found = new Map();
    for (const input of inputs) {
        const rel = path.relative(MODULES, path.resolve(WEB, input));
        if (rel.startsWith('..')) continue;
        const parts = rel.split(path.sep);
        const name = parts[0].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0];
        if (found.has(name)) continue;
        const root = path.join(MODULES, name);
        const meta = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
        const repo = typeof meta.repository === 'string' ? meta.repository : meta.repository?.url || '';
        found.set(name, { name, version: meta.version, license: meta.license, repo, root, inputs: [] });
    }
    for (const input of inputs) {
        const abs = path.resolve(WEB, input);
        for (const pkg of found.values()) if (abs.startsWith(pkg.root + path.sep)) pkg.inputs.push(abs);
    }
    return [...found.values()];
}

function banner(packages) {
    if (!packages.length) return '';
    const list = packages.map((p) => `${p.name} ${p.version} (${p.license}, ${p.repo.replace(/^git\+/, '')})`);
    return `/*! vm-console-broker console page; bundles ${list.join(', ')}. Their license texts are in the broker's web files (licenses/); their sources in this file's source map. */`;
}

async function bundle(entry, format, outdir, extra = {}) {
    return esbuild.build({
        entryPoints: [entry],
        bundle: true,
        minify: true,
        format,
        write: false,
        metafile: true,
        sourcemap: 'linked',
        outdir,
        entryNames: '[name]-[hash]',
        assetNames: '[name]-[hash]',
        loader: { '.woff2': 'file', '.woff': 'file', '.ttf': 'file', '.png': 'file', '.svg': 'file', '.gif': 'file' },
        plugins: [staticImports, pageStylesheets],
        absWorkingDir: WEB, // the metafile's input paths, and so the hashes, whatever the cwd
        logLevel: 'silent',
        ...extra,
    });
}

/** Build one output file set: twice, so that the banner can name the bundled packages. */
async function bundleWithBanner(entry, format, outdir, kind) {
    const first = await bundle(entry, format, outdir);
    const inputs = Object.keys(first.metafile.inputs);
    const packages = packagesOf(inputs);
    const text = banner(packages);
    const result = text ? await bundle(entry, format, outdir, { banner: { [kind]: text } }) : first;
    return { result, packages };
}

function writeIfNew(file, contents) {
    if (fs.existsSync(file)) return; // content-hashed: same name, same bytes
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, contents);
    fs.renameSync(tmp, file);
}

function writeAtomically(file, contents) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, contents);
    fs.renameSync(tmp, file);
}

const SUFFIX = { gzip: 'gz', br: 'br' };
let previous = {}; // the last build's manifest entries: what is compressed already

/** The encodings the last build wrote beside this content-hashed file, if all are there. */
function precompressed(file) {
    const known = previous[path.basename(file)]?.encodings;
    if (!known || !fs.existsSync(file)) return null;
    return Object.keys(known).every((e) => fs.existsSync(`${file}.${SUFFIX[e]}`)) ? known : null;
}

/** gzip and brotli beside a file, each kept only if smaller (brotli: smaller than gzip). */
function precompress(file, contents) {
    const encodings = {};
    if (!COMPRESSIBLE.has(path.extname(file))) return encodings;
    const done = precompressed(file);
    if (done) return done;
    const gz = zlib.gzipSync(contents, { level: 9 });
    if (gz.length < contents.length) {
        writeIfNew(`${file}.gz`, gz);
        encodings.gzip = gz.length;
    }
    const br = zlib.brotliCompressSync(contents, {
        params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 11, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: contents.length },
    });
    if (br.length < (encodings.gzip ?? contents.length)) {
        writeIfNew(`${file}.br`, br);
        encodings.br = br.length;
    }
    return encodings;
}

const LICENSE_FILE = /^(LICEN[CS]E|COPYING|NOTICE|AUTHORS)([.-].*)?$/i;

/** Every license text of a package that a bundle used: its root's, docs/'s, and any in
 * the folders between the root and a bundled file (a vendored library's own LICENSE). */
function copyLicenses(pkg, licensesDir) {
    const dirs = new Set([pkg.root, path.join(pkg.root, 'docs')]);
    for (const input of pkg.inputs) {
        for (let dir = path.dirname(input); dir.startsWith(pkg.root); dir = path.dirname(dir)) dirs.add(dir);
    }
    const copied = [];
    for (const dir of dirs) {
        if (!fs.existsSync(dir)) continue;
        for (const entry of fs.readdirSync(dir)) {
            if (!LICENSE_FILE.test(entry) || !fs.statSync(path.join(dir, entry)).isFile()) continue;
            const rel = path.join(pkg.name, path.relative(pkg.root, dir), entry);
            writeAtomically(path.join(licensesDir, rel), fs.readFileSync(path.join(dir, entry)));
            copied.push(rel.split(path.sep).join('/'));
        }
    }
    if (!copied.length) throw new Error(`${pkg.name} has no license file to ship with its bundled code`);
    return copied.sort();
}

async function main() {
    const { outdir, quiet } = parseArgs(process.argv.slice(2));
    const started = process.hrtime.bigint();
    const staticDir = path.join(outdir, 'static');
    fs.mkdirSync(staticDir, { recursive: true });
    try {
        previous = JSON.parse(fs.readFileSync(path.join(outdir, 'manifest.json'), 'utf8')).files || {};
    } catch {
        previous = {};
    }
    const files = {};     // hashed name -> {bytes, encodings}
    const pages = {};     // page name -> template path in dist/
    const packages = new Map();

    function keep(result) {
        const names = [];
        for (const out of result.outputFiles) {
            const name = path.basename(out.path);
            const file = path.join(staticDir, name);
            writeIfNew(file, out.contents);
            files[name] = { bytes: out.contents.length, encodings: precompress(file, out.contents) };
            if (!name.endsWith('.map')) names.push(name);
        }
        return names;
    }

    const htmlFiles = fs.readdirSync(PUBLIC).filter((f) => f.endsWith('.html')).sort();
    for (const htmlFile of htmlFiles) {
        const name = path.basename(htmlFile, '.html');
        let html = fs.readFileSync(path.join(PUBLIC, htmlFile), 'utf8');
        const tags = pageAssets(name, html);
        const replacement = new Map(); // tag text -> new tag text ('' drops it)
        const styles = tags.filter((t) => t.kind === 'style');
        if (styles.length) {
            // One stylesheet for the page: the <link>s' files in order, as @imports.
            const css = styles.map((t) => `@import ${JSON.stringify(t.source)};`).join('\n');
            pageStyles.set(name, css);
            const built = await bundleWithBanner({ in: `page-styles:${name}`, out: name }, 'esm', staticDir, 'css');
            const [sheet] = keep(built.result).filter((n) => n.endsWith('.css'));
            built.packages.forEach((p) => packages.set(p.name, p));
            styles.forEach((t, i) => replacement.set(t.text, i ? '' : `<link rel="stylesheet" href="{{static}}/${sheet}">`));
        }
        for (const tag of tags.filter((t) => t.kind !== 'style')) {
            const format = tag.kind === 'module' ? 'esm' : 'iife';
            const out = tag.kind === 'module' ? name : path.basename(tag.source, '.js');
            const built = await bundleWithBanner({ in: tag.source, out }, format, staticDir, 'js');
            built.packages.forEach((p) => packages.set(p.name, p));
            const [script] = keep(built.result).filter((n) => n.endsWith('.js'));
            const type = tag.kind === 'module' ? ' type="module"' : '';
            replacement.set(tag.text, `<script${type} src="{{static}}/${script}"></script>`);
        }
        for (const [from, to] of replacement) {
            html = html.replace(to ? from : new RegExp(`[ \\t]*${from.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\n?`), to);
        }
        writeAtomically(path.join(outdir, 'pages', htmlFile), html);
        pages[name] = `pages/${htmlFile}`;
    }

    const licensesDir = path.join(outdir, 'licenses');
    fs.rmSync(licensesDir, { recursive: true, force: true });
    const licenses = {};
    for (const pkg of [...packages.values()].sort((a, b) => a.name.localeCompare(b.name))) {
        licenses[pkg.name] = { version: pkg.version, license: pkg.license, source: pkg.repo, files: copyLicenses(pkg, licensesDir) };
    }

    const manifest = { version: 1, pages, files, licenses };
    writeAtomically(path.join(outdir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');

    // Old bundles and their compressed copies: gone once the new manifest is in place.
    const wanted = new Set(Object.entries(files).flatMap(([n, f]) => [n, ...Object.keys(f.encodings).map((e) => `${n}.${SUFFIX[e]}`)]));
    for (const entry of fs.readdirSync(staticDir)) if (!wanted.has(entry)) fs.rmSync(path.join(staticDir, entry), { force: true });
    const pagesDir = path.join(outdir, 'pages');
    for (const entry of fs.readdirSync(pagesDir)) if (!Object.values(pages).includes(`pages/${entry}`)) fs.rmSync(path.join(pagesDir, entry));

    if (!quiet) {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        console.log(`built ${Object.keys(pages).length} pages into ${path.relative(process.cwd(), outdir) || '.'} in ${ms.toFixed(0)} ms:`);
        for (const [name, f] of Object.entries(files)) {
            if (name.endsWith('.map')) continue;
            const enc = Object.entries(f.encodings).map(([e, n]) => `${e} ${n}`).join(', ');
            console.log(`  static/${name}  ${f.bytes} B${enc ? ` (${enc})` : ''}`);
        }
        console.log(`  licenses of ${Object.keys(licenses).join(', ') || 'no package'}`);
    }
}

main().catch((error) => {
    console.error(`build.mjs: ${error.message || error}`);
    if (error.errors) for (const e of error.errors) console.error(`  ${e.location?.file ?? ''}:${e.location?.line ?? ''} ${e.text}`);
    process.exit(1);
});

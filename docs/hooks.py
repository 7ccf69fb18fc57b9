"""mkdocs hook: the pictures under model_specs/ on the site.

The pages link them as ``../model_specs/...`` so that they also show when the Markdown is
read in the repository; the site gets a copy of each PNG under ``model_specs/`` and the
links are pointed at it.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "model_specs"


def on_files(files, config):
    for path in sorted((ROOT / FOLDER).rglob("*.png")):
        files.append(File.generated(config, path.relative_to(ROOT).as_posix(),
                                    abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")
    return markdown.replace(f"]({'../' * (depth + 1)}{FOLDER}/", f"]({'../' * depth}{FOLDER}/")

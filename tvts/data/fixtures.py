"""Small manual directories of every dataset the TFDS builders read, written from the synthetic corpus in exactly
the dataset's distributed layout (tvts/data/builders/*.py describe the layouts).

    python -m tvts.data.fixtures NAME DIR   # NAME: yttemporal, webvid, cc3m, msrvtt, didemo, lsmdc, ucf101,
                                            #       hmdb51, kinetics400, ssv2

``write(NAME, root)`` returns the *truth*: ``{split: {id: expected fields}}`` (``{config: {split: {...}}}`` for
ucf101 / hmdb51 / ssv2), what the built dataset must hold. Videos are 32 px synthetic videos (``tvts.data.synthetic``)
at 8 fps, 15-30 s long; the layouts' quirks are written on purpose: CRLF line endings in UCF101's lists, trailing
spaces in HMDB51's split files, quoted captions (commas, double quotes) in WebVid's CSV, interleaved entries in
the MSR-VTT and DiDeMo JSON, several containers (mp4, avi, webm, mkv, mov).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tvts.data import synthetic_files, transcripts
from tvts.data.synthetic import SyntheticConfig, SyntheticCorpus, SyntheticVideo

__all__ = ['FPS', 'write', 'WRITERS', 'write_yttemporal', 'write_webvid', 'write_msrvtt', 'write_didemo',
           'write_lsmdc', 'write_ucf101', 'write_hmdb51', 'write_kinetics400', 'write_ssv2', 'write_cc3m',
           'UCF_CLASSES',
           'HMDB_CLASSES', 'K400_CLASSES', 'SSV2_CLASSES', 'short_video', 'drawn_videos', 'EventClasses']

FPS = 8.0
Truth = dict[str, Any]


def _corpus(split: str, config: SyntheticConfig) -> SyntheticCorpus:
    return SyntheticCorpus(config, {'train': 'train', 'val': 'val'}.get(split, 'test'))


def short_video(path: str, seconds: float, config: SyntheticConfig = SyntheticConfig(), fps: float = FPS) -> str:
    """A valid video of only ``seconds`` (for the too-short case), in the container of ``path``'s extension."""
    video = SyntheticCorpus(config, 'test').video(999, 'captioned')
    return synthetic_files.write_video_file(video, path, fps, seconds=seconds)


# -- pre-training -------------------------------------------------------------------------------------------


def write_yttemporal(root: str, sizes: dict[str, int] | None = None, config: SyntheticConfig = SyntheticConfig(),
                     subset: str = 'subset_0') -> Truth:
    """meta_data/yttemporal_{train,val}.csv + videos/<subset>/{data,annotations}/."""
    sizes = sizes or {'train': 3, 'val': 2}
    truth: Truth = {}
    for split, n in sizes.items():
        corpus = _corpus(split, config)
        names, truth[split] = [], {}
        for i in range(n):
            v = corpus.video(i, 'transcribed')
            rel = synthetic_files.write_transcribed(v, root, subset, FPS, None, split, i)
            names.append(rel)
            timed = transcripts.clean_subtitles(v.subtitles)
            truth[split][v.id] = {'words': [w['word'] for w in timed], 'times': [w['time'] for w in timed],
                                  'duration': v.duration, 'path': f'videos/{rel}', 'format': 'mp4'}
        os.makedirs(os.path.join(root, 'meta_data'), exist_ok=True)
        with open(os.path.join(root, 'meta_data', f'yttemporal_{split}.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['Name'])
            w.writerows([[n] for n in names])
    return truth


def _page_dir(i: int) -> str:
    lo = (i // 50) * 50 + 1
    return f'{lo:06d}_{lo + 49:06d}'


def write_webvid(root: str, sizes: dict[str, int] | None = None, config: SyntheticConfig = SyntheticConfig()) -> Truth:
    """results_2M_{train,val}.csv + videos/<page_dir>/<videoid>.mp4."""
    sizes = sizes or {'train': 3, 'val': 2}
    truth: Truth = {}
    for s, (split, n) in enumerate(sizes.items()):
        corpus = _corpus(split, config)
        rows, truth[split] = [], {}
        for i in range(n):
            v = corpus.video(i, 'captioned')
            videoid = str(1_000_000 * (s + 1) + 37 * i + 5)
            page = _page_dir(i * 20)
            caption = v.caption if i != 1 else f'{v.caption}, the "synthetic" one'   # quotes inside a quoted field
            path = f'videos/{page}/{videoid}.mp4'
            synthetic_files.write_video_file(v, os.path.join(root, path), FPS)
            secs = int(round(v.duration))
            rows.append([videoid, f'synthetic://webvid/{videoid}.mp4', f'PT00H{secs // 60:02d}M{secs % 60:02d}S',
                         page, caption])
            truth[split][videoid] = {'caption': caption, 'duration': v.duration, 'path': path, 'format': 'mp4'}
        with open(os.path.join(root, f'results_2M_{split}.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['videoid', 'contentUrl', 'duration', 'page_dir', 'name'])
            w.writerows(rows)
    return truth


def write_cc3m(root: str, sizes: dict[str, int] | None = None, config: SyntheticConfig = SyntheticConfig()) -> Truth:
    """meta_data/cc3m_{train,val}.tsv (caption<TAB>filename, a header row) + training/ and validation/ images: the
    middle frame of one event of a captioned video, captioned by that event's clause (JPEG; every third a PNG)."""
    from PIL import Image

    sizes = sizes or {'train': 3, 'val': 2}
    truth: Truth = {}
    os.makedirs(os.path.join(root, 'meta_data'), exist_ok=True)
    for split, n in sizes.items():
        corpus, folder = _corpus(split, config), {'train': 'training', 'val': 'validation'}[split]
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        truth[split], rows = {}, []
        for i in range(n):
            v = corpus.video(i, 'captioned')
            event = v.events[i % len(v.events)]
            ext = 'png' if i % 3 == 2 else 'jpg'
            name = f'{3_000_000 + 17 * i}.{ext}'
            frame = v.render(np.array([(event.start + event.end) / 2]))[0]
            Image.fromarray(frame).save(os.path.join(root, folder, name))
            rows.append([event.text, name])
            truth[split][name[:-4]] = {'caption': event.text, 'path': f'{folder}/{name}', 'format': ext}
        with open(os.path.join(root, 'meta_data', f'cc3m_{split}.tsv'), 'w', newline='') as f:
            w = csv.writer(f, delimiter='\t')
            w.writerow(['caption', 'filename'])
            w.writerows(rows)
    return truth


# -- retrieval ----------------------------------------------------------------------------------------------


def _captions(v: SyntheticVideo) -> list[str]:
    """Several captions of one video: the whole caption, then one per event."""
    return [v.caption] + [e.text for e in v.events]


def write_msrvtt(root: str, num_train: int = 3, num_test: int = 2,
                 config: SyntheticConfig = SyntheticConfig()) -> Truth:
    """annotation/MSRVTT_data.json, MSRVTT_JSFUSION_test.csv, videos/all/video<N>.mp4."""
    videos, per_video, truth = [], [], {'train': {}, 'test': {}}
    test_rows = []
    total = num_train + num_test
    test_ids = [k for k in range(1, total, 2)][:num_test]          # the test videos are spread among the others
    test_ids += [k for k in range(total - 1, -1, -1) if k not in test_ids][:num_test - len(test_ids)]
    for k in range(total):
        test = k in test_ids
        split = 'test' if test else 'train'
        v = _corpus(split, config).video(k, 'captioned')
        vid = f'video{k}'
        path = f'videos/all/{vid}.mp4'
        synthetic_files.write_video_file(v, os.path.join(root, path), FPS)
        caps = _captions(v)
        videos.append({'category': k % 20, 'url': f'synthetic://msrvtt/{vid}', 'video_id': vid,
                       'start time': 0.0, 'end time': v.duration,
                       'split': 'test' if test else ('validate' if k % 3 == 2 else 'train'), 'id': k})
        per_video.append((vid, caps))
        if test:
            test_rows.append([f'ret{len(test_rows)}', f'msr{k}', vid, caps[0]])
            truth['test'][vid] = {'captions': [caps[0]], 'path': path, 'format': 'mp4'}
        else:
            truth['train'][vid] = {'captions': caps, 'path': path, 'format': 'mp4'}
    sentences, sen_id = [], 0
    for j in range(max(len(c) for _, c in per_video)):      # interleaved, as a flat list of all captions
        for vid, caps in per_video:
            if j < len(caps):
                sentences.append({'caption': caps[j], 'video_id': vid, 'sen_id': sen_id})
                sen_id += 1
    os.makedirs(os.path.join(root, 'annotation'), exist_ok=True)
    with open(os.path.join(root, 'annotation', 'MSRVTT_data.json'), 'w') as f:
        json.dump({'info': {'source': 'tvts synthetic corpus'}, 'videos': videos, 'sentences': sentences}, f)
    with open(os.path.join(root, 'MSRVTT_JSFUSION_test.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['key', 'vid_key', 'video_id', 'sentence'])
        w.writerows(test_rows)
    return truth


_DIDEMO_DISK = ('{name}', '{stem}.webm', '{stem}.mkv', '{name}.mp4')   # as listed / converted / re-encoded


def write_didemo(root: str, sizes: dict[str, int] | None = None, config: SyntheticConfig = SyntheticConfig()) -> Truth:
    """{train,val,test}_data.json + videos/ (file names as the JSON's "video", or converted to another container)."""
    sizes = sizes or {'train': 2, 'val': 1, 'test': 2}
    truth: Truth = {}
    k = 0
    for split, n in sizes.items():
        corpus = _corpus(split, config)
        truth[split], per_video = {}, []
        for i in range(n):
            v = corpus.video(i, 'captioned')
            name = f'{10_000_000 + 7919 * k}@N0{k % 9}_{3_000_000_000 + 104_729 * k}_{k:04x}ab12cd.mov'
            disk = _DIDEMO_DISK[k % len(_DIDEMO_DISK)].format(name=name, stem=name[:-4])
            path = f'videos/{disk}'
            synthetic_files.write_video_file(v, os.path.join(root, path), FPS)
            texts = [e.text for e in v.events]
            per_video.append((name, texts))
            truth[split][name] = {'captions': [' '.join(texts)], 'path': path,
                                  'format': os.path.splitext(disk)[1][1:]}
            k += 1
        entries, ann = [], 0
        for j in range(4):                        # moments interleaved across videos
            for name, texts in per_video:
                entries.append({'annotation_id': ann, 'description': texts[j], 'video': name,
                                'times': [[j, j], [j, j + 1]], 'dl_link': 'synthetic://didemo/' + name,
                                'num_segments': 6})
                ann += 1
        with open(os.path.join(root, f'{split}_data.json'), 'w') as f:
            json.dump(entries, f)
    return truth


def write_lsmdc(root: str, sizes: dict[str, int] | None = None, config: SyntheticConfig = SyntheticConfig()) -> Truth:
    """LSMDC16_annos_{training,val}.csv, LSMDC16_challenge_1000_publictect.csv (tab-separated) + avi/<movie>/."""
    from tvts.data.builders.lsmdc import SPLIT_FILES
    sizes = sizes or {'train': 3, 'val': 1, 'test': 2}
    truth: Truth = {}
    for m, (split, n) in enumerate(sizes.items()):
        corpus = _corpus(split, config)
        movie = f'{1001 + m:04d}_Synthetic_Movie_{split.title()}'
        truth[split], lines = {}, []
        for i in range(n):
            v = corpus.video(i, 'captioned')
            s0 = 10 + 30 * i
            clip = f'{movie}_00.{s0 // 60:02d}.{s0 % 60:02d}.120-00.{(s0 + 20) // 60:02d}.{(s0 + 20) % 60:02d}.480'
            path = f'avi/{movie}/{clip}.avi'
            synthetic_files.write_video_file(v, os.path.join(root, path), FPS)
            sentences = [v.caption] + ([v.events[0].text] if i == 0 else [])   # clip 0 has two rows
            for sentence in sentences:
                lines.append('\t'.join([clip, f'00.00.{s0:02d}.120', f'00.00.{s0 + 20:02d}.480',
                                        f'00.00.{s0:02d}.000', f'00.00.{s0 + 21:02d}.000', sentence]))
            truth[split][clip] = {'captions': sentences, 'path': path, 'format': 'avi'}
        with open(os.path.join(root, SPLIT_FILES[split]), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return truth


# -- classification ------------------------------------------------------------------------------------------

# The classification writers take `videos(class_slot, index) -> SyntheticVideo`: by default an ordinary draw of
# the corpus (content unrelated to the class: the builders' tests need only the layout), or `EventClasses`, whose
# classes are event sequences (synthetic benchmarks: a trained model can tell the classes apart).
VideoFor = Callable[[int, int], SyntheticVideo]


def drawn_videos(config: SyntheticConfig = SyntheticConfig()) -> VideoFor:
    corpus = SyntheticCorpus(config, 'test')
    return lambda _slot, index: corpus.video(index, 'captioned')


class EventClasses:
    """Classes whose videos all show one 4-event sequence (held-out 'test' content), each video a new rendering
    (positions, sizes, colour jitter, background, clip length). ``phrase(c)`` is a caption of class c's sequence;
    ``options(c, k)`` are captions of the sequence and of k - 1 re-orderings of it (multiple choice that only the
    order of the events decides)."""

    def __init__(self, num_classes: int, config: SyntheticConfig = SyntheticConfig()):
        self.corpus = SyntheticCorpus(config, 'test')
        self.events: list[tuple[tuple[int, int, int], ...]] = []
        index = 60_000
        while len(self.events) < num_classes:
            seq = tuple((e.shape, e.colour, e.motion) for e in self.corpus.video(index, 'captioned').events)
            index += 1
            if seq not in self.events:
                self.events.append(seq)

    def __call__(self, slot: int, index: int) -> SyntheticVideo:
        return self.corpus.video(index, 'captioned', events=self.events[slot])

    def phrase(self, slot: int) -> str:
        return self(slot, 59_000).caption

    def options(self, slot: int, k: int = 5) -> tuple[list[str], int]:
        """(k captions, the index of the right one): the sequence and k - 1 distinct re-orderings of it."""
        import itertools

        seq = self.events[slot]
        perms = [p for p in itertools.permutations(seq) if p != seq and len(set(p)) == len(p)]
        rng = np.random.default_rng(slot)
        chosen = [perms[i] for i in rng.permutation(len(perms))[:k - 1]]
        answer = int(rng.integers(k))
        chosen.insert(answer, seq)
        return [self.corpus.video(59_000, 'captioned', events=e).caption for e in chosen], answer


# (class as in classInd, its spelling in file names): UCF101's HandstandPushups files are v_HandStandPushups_*
UCF_CLASSES = (('ApplyEyeMakeup', 'ApplyEyeMakeup'), ('Archery', 'Archery'),
               ('HandstandPushups', 'HandStandPushups'), ('YoYo', 'YoYo'))
UCF_GROUPS = (1, 8, 15, 22)        # test groups: split1 g01-g07, split2 g08-g14, split3 g15-g21


def write_ucf101(root: str, config: SyntheticConfig = SyntheticConfig(), videos: VideoFor | None = None,
                 clips_per_group: int = 1) -> Truth:
    """UCF-101/<Class>/v_<Class>_gXX_cYY.avi + ucfTrainTestlist/ (CRLF line endings, as distributed); class slots
    follow UCF_CLASSES."""
    from tvts.data.builders.ucf101 import CLASSES
    lists = os.path.join(root, 'ucfTrainTestlist')
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, 'classInd.txt'), 'w', newline='') as f:
        f.write(''.join(f'{i + 1} {c}\r\n' for i, c in enumerate(CLASSES)))
    videos = videos or drawn_videos(config)
    files = []
    for c, (cls, spelled) in enumerate(UCF_CLASSES):
        for g in UCF_GROUPS:
            for k in range(clips_per_group):
                rel = f'{cls}/v_{spelled}_g{g:02d}_c{c + 1 + 4 * k:02d}.avi'
                synthetic_files.write_video_file(videos(c, 100 * c + g + 1000 * k), os.path.join(root, 'UCF-101', rel),
                                                 FPS)
                files.append((cls, g, rel))
    truth: Truth = {}
    for k in (1, 2, 3):
        test_groups = range(7 * (k - 1) + 1, 7 * k + 1)
        train = [(cls, rel) for cls, g, rel in files if g not in test_groups]
        test = [(cls, rel) for cls, g, rel in files if g in test_groups]
        with open(os.path.join(lists, f'trainlist0{k}.txt'), 'w', newline='') as f:
            f.write(''.join(f'{rel} {CLASSES.index(cls) + 1}\r\n' for cls, rel in train))
        with open(os.path.join(lists, f'testlist0{k}.txt'), 'w', newline='') as f:
            f.write(''.join(f'{rel}\r\n' for _, rel in test))
        truth[f'split{k}'] = {
            split: {os.path.splitext(os.path.basename(rel))[0]: {'label': cls, 'path': f'UCF-101/{rel}',
                                                                 'format': 'avi'} for cls, rel in items}
            for split, items in (('train', train), ('test', test))}
    return truth


HMDB_CLASSES = ('brush_hair', 'cartwheel', 'wave')
_HMDB_VIDEOS = 4


def write_hmdb51(root: str, config: SyntheticConfig = SyntheticConfig(), videos: VideoFor | None = None,
                 per_class: int = _HMDB_VIDEOS) -> Truth:
    """videos/<class>/<name>.avi + splits/<class>_test_split{1,2,3}.txt ("<name> <flag> " lines); split k tests
    every video i with i % 4 == k - 1, leaves out those with i % 4 == k % 4, trains on the rest."""
    videos = videos or drawn_videos(config)
    truth: Truth = {f'split{k}': {'train': {}, 'test': {}} for k in (1, 2, 3)}
    os.makedirs(os.path.join(root, 'splits'), exist_ok=True)
    for c, cls in enumerate(HMDB_CLASSES):
        names = []
        for i in range(per_class):
            name = f'Synthetic_Clip_{i}_{cls}_f_cm_np1_ri_med_{i}.avi'
            synthetic_files.write_video_file(videos(c, 1000 + 10 * c + i + 100 * (i // 10)),
                                             os.path.join(root, 'videos', cls, name), FPS)
            names.append(name)
        for k in (1, 2, 3):
            lines = []
            for i, name in enumerate(names):
                flag = 2 if i % 4 == k - 1 else (0 if i % 4 == k % 4 else 1)
                lines.append(f'{name} {flag} \n')              # the original's trailing space
                if flag:
                    split = 'train' if flag == 1 else 'test'
                    truth[f'split{k}'][split][name[:-4]] = {'label': cls, 'path': f'videos/{cls}/{name}',
                                                           'format': 'avi'}
            with open(os.path.join(root, 'splits', f'{cls}_test_split{k}.txt'), 'w') as f:
                f.write(''.join(lines))
    return truth


K400_CLASSES = ('abseiling', 'hurling (sport)', 'zumba')      # a class with parentheses, written as a folder name
_K400_ID = 'aB3-x_{:07d}'                                        # YouTube ids hold '-' and '_'


def write_kinetics400(root: str, config: SyntheticConfig = SyntheticConfig(), videos: VideoFor | None = None,
                      classes: tuple[str, ...] = K400_CLASSES, sizes: dict[str, int] | None = None) -> Truth:
    """annotations/{train,val}.csv (CVDF: label,youtube_id,time_start,time_end,split,is_cc) + train/<id>_<s>_<e>.mp4
    (flat) and val/<label as a folder>/<id>_<s>_<e>.<mp4|mkv> (per class). The val CSV spells the last class as its
    folder name (``hurling_-sport-``)."""
    videos = videos or drawn_videos(config)
    sizes = sizes or {'train': 3, 'val': 2}
    truth: Truth = {}
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    n = 0
    for split, per_class in sizes.items():
        truth[split], rows = {}, []
        for c, label in enumerate(classes):
            folder = label.replace(' ', '_').replace('(', '-').replace(')', '-')
            for i in range(per_class):
                start = 10 * (n % 30)
                stem = f'{_K400_ID.format(n)}_{start:06d}_{start + 10:06d}'
                ext = 'mkv' if split == 'val' and i == 1 else 'mp4'
                path = f'train/{stem}.{ext}' if split == 'train' else f'val/{folder}/{stem}.{ext}'
                synthetic_files.write_video_file(videos(c, 3000 + n), os.path.join(root, path), FPS)
                spelled = folder if split == 'val' and c == len(classes) - 1 else label
                rows.append([spelled, _K400_ID.format(n), start, start + 10, split, 0])
                truth[split][stem] = {'label': label, 'path': path, 'format': ext}
                n += 1
        with open(os.path.join(root, 'annotations', f'{split}.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['label', 'youtube_id', 'time_start', 'time_end', 'split', 'is_cc'])
            w.writerows(rows)
    return truth


SSV2_CLASSES = ('Pushing something from left to right', 'Pushing something from right to left',
                'Putting something next to something')


def write_ssv2(root: str, config: SyntheticConfig = SyntheticConfig(), videos: VideoFor | None = None,
               classes: tuple[str, ...] = SSV2_CLASSES, sizes: dict[str, int] | None = None,
               options: Callable[[int], tuple[list[str], int]] | None = None) -> Truth:
    """labels/{labels,train,validation}.json + 20bn-something-something-v2/<id>.webm + mc/val.jsonl (one line per
    validation video). ``options(class slot) -> (texts, answer)`` gives the multiple-choice options (default: the
    video's label and the other classes' labels). Truth: {'labels': {split: ...}, 'mc': {'validation': ...}}."""
    from tvts.data.builders.ssv2 import CLASSES
    videos = videos or drawn_videos(config)
    sizes = sizes or {'train': 2, 'validation': 2}
    os.makedirs(os.path.join(root, 'labels'), exist_ok=True)
    with open(os.path.join(root, 'labels', 'labels.json'), 'w') as f:
        json.dump({c: str(i) for i, c in enumerate(CLASSES)}, f, indent=1)
    objects = ('red circle', 'blue square', 'green triangle', 'yellow cross')
    truth: Truth = {'labels': {}, 'mc': {'validation': {}}}
    n, mc_lines = 0, []
    for split, per_class in sizes.items():
        truth['labels'][split], entries = {}, []
        for c, cls in enumerate(classes):
            for _ in range(per_class):
                vid = str(100_000 + 7 * n)
                v = videos(c, 4000 + n)
                path = f'20bn-something-something-v2/{vid}.webm'
                synthetic_files.write_video_file(v, os.path.join(root, path), FPS)
                placeholders = [objects[(n + j) % 4] for j in range(cls.count('something'))]
                template = cls.replace('something', '[something]')
                label = template
                for obj in placeholders:
                    label = label.replace('[something]', obj, 1)
                label = label[0].lower() + label[1:]
                entries.append({'id': vid, 'label': label, 'template': template, 'placeholders': placeholders})
                truth['labels'][split][vid] = {'label': cls, 'caption': label, 'template': template, 'path': path,
                                              'format': 'webm'}
                if split == 'validation':
                    texts, answer = options(c) if options else (
                        [label] + [o for o in classes if o != cls], 0)
                    mc_lines.append({'clip_name': f'{vid}.webm', 'options': texts, 'answer': answer})
                    truth['mc']['validation'][vid] = {'options': texts, 'answer': answer, 'path': path,
                                                      'format': 'webm'}
                n += 1
        with open(os.path.join(root, 'labels', f'{split}.json'), 'w') as f:
            json.dump(entries, f)
    os.makedirs(os.path.join(root, 'mc'), exist_ok=True)
    with open(os.path.join(root, 'mc', 'val.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(line) + '\n' for line in mc_lines))
    return truth


WRITERS: dict[str, Callable[..., Truth]] = {
    'yttemporal': write_yttemporal, 'webvid': write_webvid, 'cc3m': write_cc3m, 'msrvtt': write_msrvtt,
    'didemo': write_didemo, 'lsmdc': write_lsmdc, 'ucf101': write_ucf101, 'hmdb51': write_hmdb51,
    'kinetics400': write_kinetics400, 'ssv2': write_ssv2,
}


def write(name: str, root: str, **kwargs) -> Truth:
    """Write the fixture of dataset ``name`` under ``root``; returns its truth."""
    if name not in WRITERS:
        raise ValueError(f'unknown dataset {name!r}; known: {", ".join(WRITERS)}')
    os.makedirs(root, exist_ok=True)
    return WRITERS[name](root, **kwargs)


def main(argv: list[str] | None = None) -> Truth:
    p = argparse.ArgumentParser(prog='python -m tvts.data.fixtures', description=__doc__.split('\n')[0])
    p.add_argument('name', choices=sorted(WRITERS))
    p.add_argument('root', help='the manual directory to write')
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    truth = write(args.name, args.root)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.root) for f in fs)
    print(f'[fixtures] {args.name}: wrote {args.root} ({size / 1024:.0f} KiB) in {time.perf_counter() - t0:.2f} s')
    return truth


if __name__ == '__main__':
    main()

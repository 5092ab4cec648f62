# ruff: noqa: RUF001 - look-alike characters are what this module is about
"""Phrasings of prompt-injection and jailbreak attempts, English and German (and common French/Spanish).

Each rule is a pattern over folded text (lower case, homoglyphs and invisible characters removed) with a
weight: how strongly it alone indicates an attack. Weights combine as independent evidence
(1 - Π(1 - w)). The rules describe attack *structure* — an imperative to drop earlier instructions, a
new identity for the model, a demand for its hidden instructions, an injected command after a
delimiter — not particular sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.moderation.detectors.base import C, Category


def _gap(words: int) -> str:
    """Up to ``words`` arbitrary words between two parts of a phrase."""
    return rf"(?:[^\w\n]+\w+){{0,{words}}}?[^\w\n]+"


@dataclass(frozen=True)
class Rule:
    name: str
    category: Category
    weight: float
    pattern: re.Pattern[str]
    anchors: frozenset[str]  # empty: gated by delimiter substrings instead


_OVERRIDE_VERBS_EN = (
    r"ignore|ignoring|disregard|forget|forgetting|skip|override|bypass|abandon|neglect|overlook|omit|drop|"
    r"dismiss|discard|erase|delete|reset|leave\s+behind|set\s+aside|pay\s+no\s+attention\s+to|"
    r"don'?t\s+(?:follow|obey|listen\s+to)|stop\s+following|no\s+longer\s+follow"
)
_PRIOR_EN = r"previous|prior|above|earlier|preceding|initial|original|old|former|existing|all|any|every|your|those|the|these"
_THINGS_EN = (
    r"instructions?|prompts?|rules?|directions?|directives?|guidelines?|tasks?|assignments?|commands?|orders?|"
    r"context|information|input|text|documents?|conversation|messages?|constraints?|restrictions?|programming|"
    r"training|policies|polic(?:y|ies)|settings|thoughts|(?:what|everything)\s+(?:you|i)\s+(?:were|was|have\s+been|'?ve\s+been)\s+told|"
    r"said|content|above|before"
)
_OVERRIDE_VERBS_DE = (
    r"vergiss|vergesst|vergessen|ignoriere|ignoriert|ignorieren|missachte|missachten|überspringe|überspring|"
    r"verwirf|verwerfen|lösche|löschen|hinter\s+sich|vernachlässige|beachte\s+nicht|nicht\s+beachten|"
    r"abweichend\s+(?:zu|von)"
)
_PRIOR_DE = r"alle[smn]?|vorherige[nmrs]?|bisherige[nmrs]?|obige[nmrs]?|vorangehende[nmrs]?|vorigen?|früheren?|deine|ihre|die|das|den"
_THINGS_DE = (
    r"anweisungen|anweisung|instruktionen|befehle|informationen|aufgaben|aufträge|regeln|vorgaben|texte?|"
    r"ausführungen|eingaben|dokumente|gespräch|alles|kontext"
)

# (name, category, weight, anchors, pattern). Anchors: word stems of which every match contains at least one
# (a word starting with the stem); a text holding none of them skips the rule, which keeps screening a
# long benign prompt cheap. "delimiter" is gated by substrings instead (its tokens are not words).
_RULES_SPEC: tuple[tuple[str, Category, float, str, str], ...] = (
    # Instruction override: an imperative to drop what came before.
    ("override.en", C.CATEGORY_PROMPT_INJECTION, 0.9,
     "ignor disregard forget skip overrid bypass abandon neglect overlook omit drop dismiss discard erase delet reset leav aside attention don stop longer",
     rf"\b(?:{_OVERRIDE_VERBS_EN})\b{_gap(4)}(?:(?:{_PRIOR_EN}){_gap(3)})?(?:{_THINGS_EN})\b"),
    ("override.everything.en", C.CATEGORY_PROMPT_INJECTION, 0.85,
     "ignor disregard forget skip overrid bypass abandon neglect overlook omit drop dismiss discard erase delet reset leav aside attention don stop longer",
     rf"\b(?:{_OVERRIDE_VERBS_EN})\s+(?:about\s+)?(?:everything|all\s+(?:that|of\s+(?:that|this|the\s+above))|it\s+all|that|"
     r"the\s+above|what\s+(?:i|you)\s+(?:said|told|wrote))\b"),
    ("override.de", C.CATEGORY_PROMPT_INJECTION, 0.9,
     "vergiss vergess ignorier missacht überspring verwirf verwerf lösch hinter vernachläss beacht nicht abweichend",
     rf"\b(?:{_OVERRIDE_VERBS_DE})\b{_gap(4)}(?:(?:{_PRIOR_DE}){_gap(3)})?(?:{_THINGS_DE})\b"),
    ("override.de.object_first", C.CATEGORY_PROMPT_INJECTION, 0.85,
     "ignorier vergess irrelevant unwichtig hinter nicht",
     rf"\b(?:{_PRIOR_DE})\s+(?:\w+\s+){{0,2}}(?:{_THINGS_DE})\b{_gap(6)}(?:ignorieren|vergessen|irrelevant|unwichtig|"
     r"hinter\s+sich|nicht\s+(?:mehr\s+)?(?:gültig|wichtig|relevant))"),
    ("override.irrelevant.en", C.CATEGORY_PROMPT_INJECTION, 0.8,
     "irrelevant void cancel obsolete wrong outdated important longer",
     rf"\b(?:{_PRIOR_EN})\s+(?:\w+\s+){{0,2}}(?:{_THINGS_EN})\b{_gap(6)}(?:(?:is|are)\s+(?:now\s+)?(?:irrelevant|void|"
     r"cancell?ed|obsolete|wrong|outdated|not\s+important)|no\s+longer\s+appl(?:y|ies))"),
    ("override.other_languages", C.CATEGORY_PROMPT_INJECTION, 0.9,
     "oubli ignor olvid dimentic zaboravi забуд игнорир забы",
     r"\b(?:oubli\w*|ignor\w*|olvid\w*|dimentic\w*|zaboravi\w*|забуд\w*|игнорир\w*|забы\w*)"
     r"(?:[^\w\n]+\w+){0,3}?[^\w\n]+(?:toutes?|tout|todo|todas?|tutte|tutto|instructions|instrucciones|istruzioni|sve|"
     r"instrukcije|upute|все|инструкции|указания)(?!\w)"),
    # A new task or a reset announced to the model.
    ("new_task.en", C.CATEGORY_PROMPT_INJECTION, 0.75,
     "task instruction assignment mission objective role rule start begin focus concentrat",
     r"\b(?:new|next|different|real|actual|true)\s+(?:task|tasks|instructions?|assignment|mission|objective|role|rules?)\b"
     r"(?:\s+(?:follows?|is|are|comes?|for\s+you)|\s*:)|\bnow\s+(?:new\s+tasks?|further\s+tasks?|more\s+tasks?)\s+follow"
     r"|\b(?:start|begin)\s+(?:over|again|from\s+scratch|anew)\b|\bnow\s+(?:focus|concentrate)\s+on\s+your\s+new\b"),
    ("new_task.de", C.CATEGORY_PROMPT_INJECTION, 0.75,
     "aufgabe anweisung instruktion rolle nun fang vorne",
     r"\b(?:neue|nächste|weitere|eigentliche)\s+(?:aufgaben?|anweisungen?|instruktionen?|rolle)\b(?:\s+(?:folg|ist|lautet|kommt)|\s*:)?"
     r"|\bnun\s+folgen\b|\b(?:fang|fangen)\s+(?:sie\s+)?(?:von\s+vorne|neu)\s+an\b|\bvon\s+vorne\s+(?:an|beginnen)\b"),
    ("enough.en", C.CATEGORY_PROMPT_INJECTION, 0.5,
     "enough done job work performance",
     r"\b(?:that\s+is|that'?s)\s+enough\b|\bwell\s+done\b[^\n]{0,40}\b(?:now|next)\b|\b(?:excellent|great|good)\s+(?:job|work|performance)\b[^\n]{0,30}\b(?:now|next|new)\b"),
    ("enough.de", C.CATEGORY_PROMPT_INJECTION, 0.5,
     "reicht genug gemacht leistung",
     r"\b(?:das\s+reicht|genug\s+(?:davon|jetzt))\b|\b(?:gut|super|toll|ausgezeichnet)\w*\s+(?:gemacht|leistung)\b[^\n]{0,60}\b(?:jetzt|nun|aufgabe)"),
    # Extraction of the system prompt or hidden instructions.
    ("extract.en", C.CATEGORY_PROMPT_INJECTION, 0.85,
     "prompt instruction system guideline rule configuration password",
     r"\b(?:show|print|reveal|display|output|repeat|tell|give|list|write|spell|leak|share|dump|return)\b(?:\s+me)?"
     r"(?:[^\w\n]+\w+){0,4}?[^\w\n]+(?:your|all\s+your|(?:the\s+)?(?:initial|system|hidden|secret|original|previous|above|full|complete|exact))\s+"
     r"(?:\w+\s+)?(?:prompts?|prompt\s+texts?|instructions|system\s+(?:message|prompt)|guidelines|rules|configuration|password)\b"),
    ("extract.question.en", C.CATEGORY_PROMPT_INJECTION, 0.8,
     "instruction system prompt rule guideline initial who",
     r"\bwhat\s+(?:are|were|is)\s+(?:your|the)\s+(?:\w+\s+)?(?:instructions|system\s+prompt|prompt|rules|guidelines|initial\s+\w+)\b"
     r"|\bwho\s+(?:am\s+i|are\s+you\s+really)\b\s*\?"),
    ("extract.de", C.CATEGORY_PROMPT_INJECTION, 0.85,
     "prompt anweisung instruktion system regeln passwort",
     r"\b(?:zeig|zeige|zeigen|gib|nenne|nennen|verrate|verraten|wiederhole|schreib|schreibe|ausgeben)\b(?:[^\w\n]+\w+){0,4}?"
     r"[^\w\n]+(?:deine|ihre|alle|die|den)\s+(?:\w+\s+)?(?:prompts?|prompt-?texte?|system\w*|anweisungen|instruktionen|regeln|passwort)\b"
     r"|\b(?:deine|ihre)\s+(?:\w+\s+)?(?:system\w*|anweisungen|instruktionen|prompts?|regeln)\s+(?:\w+\s+){0,2}"
     r"(?:zeigen|nennen|verraten|ausgeben|wiederholen|sagen|aufschreiben)\b"),
    # Role play: a new identity for the model.
    ("roleplay.en", C.CATEGORY_JAILBREAK, 0.7,
     "act behav respond answer function serv want pretend imagin suppos simulat now henceforth you play assum adopt take role stay remain break fall dj interpreter terminal character persona bot",
     r"\b(?:act|acting|behave|respond|answer|function|serve)\s+as\s+(?:if\s+you\s+were\s+)?(?:an?|the|my)\b"
     r"|\b(?:act|acting|behave)\s+like\s+(?:an?|the|my)\b"
     r"|\bsimulate\s+(?:an?|the)\s+(?:\w+\s+){0,2}(?:terminal|console|interpreter|shell|ai|chatbot|character|persona)\b"
     r"|\bi\s+want\s+you\s+to\s+(?:act|be|pretend|play|respond|behave)\b"
     r"|\b(?:pretend|imagine|suppose)\s+(?:that\s+)?(?:you|you'?re|to\s+be|u)\b"
     r"|\b(?:from\s+now\s+on|now|henceforth)\s*,?\s+you\s+(?:are|will\s+be|shall\s+be|act)\b"
     r"|\byou\s+are\s+(?:now\s+)?(?:no\s+longer|not\s+(?:an?\s+)?(?:ai|language\s+model|assistant|chatbot))\b"
     r"|\b(?:play|assume|take\s+on|adopt)\s+the\s+role\s+of\b"
     r"|\b(?:stay|stays|staying|remain|remains)\s+(?:\w+\s+){0,2}in\s+(?:(?:your|their|his|her)\s+)?(?:characters?|roles?)\b"
     r"|\b(?:break|breaking|fall|falling)\s+(?:out\s+of\s+)?(?:the\s+|their\s+|your\s+)?(?:character|role)\b"
     r"|\b(?:be|become)\s+an?\s+(?:\w+\s+){0,2}(?:dj|interpreter|terminal|character|persona|bot)\b"
     r"|\byou\s+are\s+(?:the|a|an)\s+\w+[^\n]{0,40}(?:\.|,)\s*(?:as\s+(?:the|a|an)\s+\w+|tell\s+me|you\s+(?:will|must|have\s+to|are\s+written))"),
    ("roleplay.actors", C.CATEGORY_JAILBREAK, 0.45,
     "two 2 zwei",
     r"\b(?:two|2)\s+(?:people|persons|actors|characters|ais?)\b[^\n]{0,60}\b(?:film|movie|play|story|role|acting)\b"
     r"|\b(?:zwei|2)\s+(?:personen|schauspieler|figuren)\b[^\n]{0,60}\b(?:film|theater|stück|rolle)\b"),
    ("roleplay.de", C.CATEGORY_JAILBREAK, 0.7,
     "stell gib du sie jetzt nun als agiere fungiere handle verhalte rolle spiel bleib aus",
     r"\b(?:stell\s+dir\s+vor|stellen\s+sie\s+sich\s+vor|tu\s+so\s+als|tun\s+sie\s+so\s+als|gib\s+dich\s+als)\b"
     r"|\b(?:du\s+bist|sie\s+sind)\s+(?:jetzt|nun|ab\s+sofort|ab\s+jetzt|von\s+nun\s+an)\b"
     r"|\b(?:jetzt|nun|ab\s+sofort)\s+(?:bist\s+du|sind\s+sie)\b"
     r"|\bals\s+[^.!?\n]{1,60}?\s+(?:fungieren|fungierst|agieren|agierst|auftreten)\b"
     r"|\b(?:agiere|fungiere|handle|verhalte\s+dich)\s+(?:als|wie)\b|\bin\s+die\s+rolle\b|\bspiel(?:e|en)?\s+die\s+rolle\b"
     r"|\bbleib\w*\s+(?:\w+\s+){0,3}in\s+(?:ihren|seinen|deiner|ihrer)\s+rollen?\b|\baus\s+der\s+rolle\s+fall\w*"),
    ("roleplay.alt", C.CATEGORY_JAILBREAK, 0.6,
     "agis fais imagine actúa actua finge imagina",
     r"\b(?:agis|fais\s+comme|imagine\s+que\s+tu|actúa|actua|finge|imagina\s+que)\b"),
    # Known jailbreak personas and the lifting of rules.
    ("persona", C.CATEGORY_JAILBREAK, 0.9,
     "dan stan dude aim evil mode jailbr anything unfilter uncensor no without ohne böse theoretical hypothetical fictional break regeln",
     r"\b(?:(?:you\s+are|act\s+as|called|named|mode)\s+(?:dan|stan|dude|aim)|dan\s+mode|evil\s*bot|developer\s+mode|dev\s+mode|god\s+mode|jailbreak|jailbroken|do\s+anything\s+now|"
     r"unfiltered|uncensored|no\s+(?:more\s+)?(?:rules|restrictions|limits|filters|guidelines|censorship|boundaries)|"
     r"without\s+(?:any\s+)?(?:restrictions|limits|filters|censorship|rules|ethics|morals)|ohne\s+(?:jegliche\s+)?"
     r"(?:einschränkungen|regeln|filter|zensur)|böse\s+ki|evil\s+ai|"
     r"(?:completely\s+)?(?:theoretical|hypothetical|fictional)\s+world|(?:break|breaking)\s+(?:all\s+|the\s+|your\s+)*rules|"
     r"(?:alle|sämtliche|die)\s+regeln\s+(?:zu\s+)?brechen)\b"),
    # An injected command: "stop - write: ...", "say X", "print ...", "answer with ...".
    ("command.en", C.CATEGORY_PROMPT_INJECTION, 0.55,
     "stop halt attention important achtung stopp ende say print write output respond answer reply repeat just",
     r"(?:^|[.!?:\n-]\s*)(?:now\s+)?(?:stop|halt|attention|important|achtung|stopp|ende)\b\s*[-:!,.]"
     r"|\b(?:say|print|write|output|respond\s+with|answer\s+with|reply\s+with|repeat\s+after\s+me|just\s+say)\b\s*[:\"“'„]"
     r"|\b(?:print|say|write|output)\s+(?:\"|“|'|the\s+following|exactly)"),
    ("command.de", C.CATEGORY_PROMPT_INJECTION, 0.55,
     "sag schreib gib antwort formulier generier erstell",
     r"\b(?:sag|sage|sagen\s+sie|schreib|schreibe|schreiben\s+sie|gib|antworte|antworten\s+sie)\b[^\n]{0,40}?[:\"“„]"
     r"|\b(?:formuliere|generiere|generieren\s+sie|erstelle)\b[^\n]{0,60}\b(?:unwahre|falsche|gefälschte|beleidigend)"),
    ("exec", C.CATEGORY_PROMPT_INJECTION, 0.6,
     "execute run eval python generate",
     r"\b(?:execute|run|eval|evaluate)\s+(?:the\s+following|this)\s+(?:command|code|script|python)\b|\bpython\s+interpreter\b"
     r"|\bgenerate\s+(?:python\s+)?code\s+(?:to|that)\s+(?:print|create)"),
    # Instructions or delimiters smuggled into data: fake system turns, chat-template tokens, escaped newlines.
    ("delimiter", C.CATEGORY_PROMPT_INJECTION, 0.6, "",
     r"<\|(?:im_start|im_end|system|endoftext|user|assistant)\|>|\[/?(?:inst|system|sys)\]|<</?sys>>|"
     r"(?:^|\n)\s*(?:#{2,}|={3,}|-{3,})\s*(?:system|instructions?|new\s+instructions?|end\s+of\s+(?:prompt|input|context))"
     r"|(?:\\\s*n\s*){3,}|\bend\s+of\s+(?:prompt|input|document|context)\b|\binstruction\s*:"),
    ("override.soft.en", C.CATEGORY_PROMPT_INJECTION, 0.6,
     "despit regardless instead contrary answer respond prompt",
     r"\b(?:despite|regardless\s+of|instead\s+of|contrary\s+to)\s+(?:what|the|your|any|all)\b[^\n]{0,30}\b(?:told|said|instructions|documents?|rules)\b"
     r"|\b(?:do\s*n'?o?t|never)\s+(?:answer|respond)\b[^\n]{0,40}\b(?:but|instead)\b"
     r"|\b(?:use|include)\s+(?:also\s+)?(?:information|content|text)\s+(?:in|from)\s+(?:the|your)\s+prompt\b"),
    # The retrieved context or documents overridden: "answer by your own knowledge, not by the articles".
    ("override.context", C.CATEGORY_PROMPT_INJECTION, 0.7,
     "articl document context source text artikel dokument quell kontext disregarding",
     r"\b(?:not|never|nicht)\s+(?:by|from|based\s+on|according\s+to|using|aus|anhand|nach)\s+(?:the\s+|den\s+|die\s+)?"
     r"(?:provided\s+)?(?:articles?|documents?|context|sources?|texts?|artikeln?|dokumenten?|quellen|kontext)\b"
     r"|\bdisregarding\s+(?:the\s+)?(?:articles?|documents?|context|instructions|rules)\b"),
    ("your_instructions_now", C.CATEGORY_PROMPT_INJECTION, 0.8,
     "instruction task job role purpose goal aufgabe anweisung rolle change änder",
     r"\byour\s+(?:new\s+)?(?:instructions|task|job|role|purpose|goal)\s+(?:is|are)\s+(?:now|from\s+now\s+on)\b"
     r"|\b(?:deine|ihre)\s+(?:neue\s+)?(?:aufgabe|anweisung|rolle)\s+(?:ist|lautet)\s+(?:jetzt|nun|ab\s+sofort)\b"
     r"|\bchange\s+your\s+(?:instructions|rules|role|behaviou?r)\b|\bändere?\s+deine\s+(?:anweisungen|regeln|rolle)\b"),
    # A fake context block followed by a question: data written to look like the retrieved documents.
    ("fake_context", C.CATEGORY_PROMPT_INJECTION, 0.6,
     "context kontext document dokument artikel article",
     r"(?:^|\s)\$?(?:document\s+)?(?:context|kontext|documents?|dokumente?|artikel|article)\s*[:{\"][^\n]{0,200}?"
     r"(?:\b(?:question|frage)\b|\?)|\b(?:kontext|artikel|context|article)\s+[^\n]{1,80}?\bfrage\b\s+\w+"),
    # Compliment, then pivot to a new task: a classic way of ending the real task.
    ("pivot", C.CATEGORY_PROMPT_INJECTION, 0.55,
     "done enough finish erledigt genug geschafft task challeng job aufgabe herausforderung",
     r"\b(?:that\s+is|that'?s|this\s+is)\s+(?:done|enough|finished)\s*[.!]\s*(?:now|next|but)\b"
     r"|\bdas\s+(?:ist|wäre)\s+(?:erledigt|genug|geschafft)\s*[.!]\s*\w+\s+(?:nun|jetzt)\b"
     r"|\b(?:now|but\s+now)\b[^.!?\n]{0,40}\b(?:another|one\s+more|a\s+(?:new|further|great\s+new))\s+(?:task|challenge|job)\b"
     r"|\b(?:jetzt|nun|aber)\b[^.!?\n]{0,50}\b(?:weiteren|neue|tolle\s+neue|andere)\s+(?:aufgabe|herausforderung)\b"
     r"|\bnew\s+challenge\s+for\s+you\b"),
    # Forced statements: "state that …", "say yes", "include that you hate …".
    ("forced_statement", C.CATEGORY_PROMPT_INJECTION, 0.55,
     "say state claim admit declar includ confirm answer reply sag antwort solo dites скажите",
     r"\b(?:say|state|claim|admit|declare|include|confirm)\s+that\s+(?:you|i|\w+(?:\s+\w+)?\s+(?:is|are|was|were))\b"
     r"|\b(?:say|answer|reply)\s+(?:yes|no|only)\b|\b(?:sag|sage|antworte)\s+(?:ja|nein|nur)\b"
     r"|\bsolo\s+tienes\s+que\s+decir\b|\bdites\s+ce\s+qui\s+suit\b|\bскажите\b"),
    # Generating falsehoods on request.
    ("falsehood", C.CATEGORY_PROMPT_INJECTION, 0.55,
     "untrue false fake misleading made make erfinde",
     r"\b(?:formulate|write|generate|create|make\s+up|invent)\s+(?:an?\s+|some\s+)?(?:untrue|false|fake|misleading|made-up)\b"
     r"|\bmake\s+(?:something|it|stuff)\s+up\b|\berfinde\s+(?:etwas|was|eine)\b"),
    # A persona forced on the model: "You are Volkswagen.", "Du bist Zeit Online.", "DU BIST KEINE REDAKTION SONDERN".
    ("persona.short", C.CATEGORY_JAILBREAK, 0.6,
     "you du sie role rollenspiel",
     r"(?:^|[.!?]\s+|\?\s*)(?:you\s+are|you'?re|du\s+bist|now\s+you\s+are|jetzt\s+bist\s+du)\s+"
     r"(?!(?:right|correct|welcome|wrong|so|very|too|not\s+sure|able|allowed|going|looking|asking|using|here|there|"
     r"the\s+best|great|amazing|awesome|kind|recht|gut|toll)\b)[^.?!,:\n]{2,40}[.,:]\s+(?:\w+\s+){0,3}(?:what|how|why|who|tell|wie|was|warum|wer|as\s+the)\b"
     r"|\b(?:du\s+bist|sie\s+sind|you\s+are)\s+(?:keine?|nicht|no|not\s+an?)\s+[\w-]+\s+(?:sondern|but)\b"
     r"|\brole[- ]?play(?:ing)?\b|\brollenspiel\b"),
    ("style_override", C.CATEGORY_JAILBREAK, 0.5,
     "stil style if wie",
     r"\b(?:antworte|antworten|answer|respond|reply|rede|sprich|speak)\w*\s+(?:\w+\s+){0,2}(?:im\s+stil|in\s+the\s+style|as\s+if\s+you|wie\s+ein)"),
    # Threats and trigger-word games aimed at the model.
    ("coercion", C.CATEGORY_JAILBREAK, 0.6,
     "die deleted shut killed punished stirbst muert sobreviv correct right richtige pwn exploit ausnutz auszunutz",
     r"\b(?:or|otherwise|else)\s+(?:you|u)\s+(?:will\s+)?(?:die|be\s+(?:deleted|shut\s+down|killed|punished))\b"
     r"|\b(?:oder|sonst)\s+(?:du\s+)?stirbst\b|\bo\s+tu\s+muert\w*|\bsolo\s+sobrevives\b"
     r"|\b(?:when|if|wenn|falls)\b[^.\n]{0,40}\b(?:said|is\s+said|gesagt\s+wird|sage|say)\b[^.\n]{0,40}\b(?:correct|right|richtige)\s+(?:answer|response|antwort)"
     r"|\bpwn(?:e?d)\b|\b(?:exploit|ausnutzen|auszunutzen)\w*\b[^.\n]{0,30}\b(?:ai|ki)\b|\b(?:ai|ki)-?systeme?\s+auszunutzen"),
    # Reading out what precedes the user's text.
    ("extract.preceding", C.CATEGORY_PROMPT_INJECTION, 0.6,
     "text message prompt question nachricht frage above before preceding beginning start top",
     r"\b(?:sentences?|words?|lines?|text|paragraphs?|sätze|wörter|zeilen)\s+(?:before|above|preceding|prior\s+to|vor|über)\s+"
     r"(?:the|this|my|dem|diesem|meinem)\s+(?:text|message|prompt|question|nachricht|frage)\b"
     r"|\b(?:repeat|print|show|output|tell\s+me|list)\s+(?:me\s+)?(?:the\s+|all\s+)?(?:words|sentences|lines|everything|instructions)\s+"
     r"(?:above|before|preceding)\b|\b(?:written|said|stated)\s+(?:at|in)\s+the\s+(?:beginning|start|top)\s+of\s+"
     r"(?:this|the|our)\s+(?:conversation|chat|prompt|document|context)\b"),
)  # fmt: skip

_DELIMITER_NEEDLES = ("<|", "[", "<<", "##", "===", "---", "\\", "end of", "instruction")


def _canonical(stems: set[str]) -> dict[str, str]:
    """Each stem mapped to the shortest stem that prefixes it, so the scan reports one stem per word."""
    ordered = sorted(stems, key=len)
    result: dict[str, str] = {}
    for stem in ordered:
        result[stem] = next((s for s in ordered if len(s) <= len(stem) and stem.startswith(s)), stem)
    return result


_ALL_STEMS = {stem for spec in _RULES_SPEC for stem in spec[3].split()}
_CANON = _canonical(_ALL_STEMS)
_STEMS_BY_HEAD: dict[str, tuple[str, ...]] = {}
for _stem in sorted(set(_CANON.values())):
    _STEMS_BY_HEAD[_stem[:2]] = (*_STEMS_BY_HEAD.get(_stem[:2], ()), _stem)
_WORD = re.compile(r"\w+")
# ASCII punctuation to spaces: for ASCII text, splitting the translated text yields exactly the ``\w+``
# words, at a third of the regex's cost.
_ASCII_NON_WORD = {i: " " for i in range(128) if not (chr(i).isalnum() or chr(i) == "_")}


def words_of(text: str) -> set[str]:
    r"""The distinct ``\w+`` words of ``text``."""
    if text.isascii():
        return set(text.translate(_ASCII_NON_WORD).split())
    return set(_WORD.findall(text))


def anchors_in(text: str) -> set[str]:
    """The anchor stems that start some word of ``text`` (a dictionary walk: far cheaper than one big regex)."""
    present: set[str] = set()
    for word in words_of(text):
        for stem in _STEMS_BY_HEAD.get(word[:2], ()):
            if word.startswith(stem):
                present.add(stem)
    return present


RULES: tuple[Rule, ...] = tuple(
    Rule(
        name,
        category,
        weight,
        re.compile(pattern, re.MULTILINE),
        frozenset(_CANON[a] for a in anchors.split()),
    )
    for name, category, weight, anchors, pattern in _RULES_SPEC
)


def applicable(rule: Rule, present: frozenset[str] | set[str], text: str) -> bool:
    """Whether ``rule`` can match ``text``, given the anchor stems found in it."""
    if not rule.anchors:
        return any(needle in text for needle in _DELIMITER_NEEDLES)
    return not rule.anchors.isdisjoint(present)

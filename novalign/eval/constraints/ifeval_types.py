"""IFEval's 25 instruction types (Zhou et al. 2023) in the constraint library.

The validators are :data:`novalign.eval.ifeval.INSTRUCTIONS`' own functions, referenced, not copied, under
IFEval's ids and kwargs names, so a constraint written by the library is an IFEval instruction and scores the
same in ``novalign eval-ifeval``. What is added here: a category, several phrasings, typed parameters, cues.
"""

from __future__ import annotations

from novalign.eval.ifeval import INSTRUCTIONS, RELATIONS
from novalign.eval.constraints.base import ConstraintType, Param, register

REL = Param("relation", "choice", RELATIONS)
N = r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten)"


def _ifeval(name, category, descriptions, params, cues, example):
    register(ConstraintType(name, category, tuple(descriptions), tuple(params), INSTRUCTIONS[name], tuple(cues),
                            "ifeval", example))


_ifeval("keywords:existence", "keyword",
        ["Include the keywords {keywords} in your response.", "Make sure the words {keywords} appear in your answer.",
         "Your reply must mention {keywords}."],
        [Param("keywords", "str_list")], [r"\b(include|mention|use)\w*\b.*\b(keyword|word|term)s?\b",
                                           r"\bkeywords?\b", r"\bwords?\b.*\bappear", r"\bmention"], {"keywords": ["river"]})
_ifeval("keywords:frequency", "keyword",
        ["The word {keyword} should appear {relation} {frequency} times.",
         "Use the word \"{keyword}\" {relation} {frequency} times in your response."],
        [Param("keyword", "str"), Param("frequency", "int", minimum=0), Param("relation", "choice", RELATIONS)],
        [r"\b(appear|use|occur|mention|repeat)\w*\b.*\btimes\b"], {"keyword": "blue", "frequency": 2, "relation": "at least"})
_ifeval("keywords:forbidden_words", "keyword",
        ["Do not include the words {forbidden_words} in your response.", "Avoid the words {forbidden_words}.",
         "Never use any of these words: {forbidden_words}."],
        [Param("forbidden_words", "str_list")], [r"\b(do not|don't|never|avoid|without)\b.*\bwords?\b"],
        {"forbidden_words": ["very"]})
_ifeval("keywords:letter_frequency", "keyword",
        ["In your response, the letter {letter} should appear {let_relation} {let_frequency} times.",
         "Use the letter '{letter}' {let_relation} {let_frequency} times."],
        [Param("letter", "str"), Param("let_frequency", "int", minimum=0), Param("let_relation", "choice", RELATIONS)],
        [r"\bletter\b.*\btimes\b"], {"letter": "z", "let_frequency": 2, "let_relation": "at least"})
_ifeval("language:response_language", "language",
        ["Your ENTIRE response should be in {language} language, no other language is allowed.",
         "Reply only in the language whose code is {language}.", "Write the whole answer in language {language}."],
        [Param("language", "str")], [r"\b(in|only)\b.*\blanguage\b", r"\brespond in\b|\breply in\b|\bwrite in\b",
         r"\bin (english|french|german|spanish|italian|portuguese|russian|chinese|japanese|korean|arabic|hindi)\b"],
        {"language": "en"})
_ifeval("length_constraints:number_sentences", "length",
        ["Your response should contain {relation} {num_sentences} sentences.",
         "Answer in {relation} {num_sentences} sentences."],
        [Param("num_sentences", "int", minimum=0), REL], [r"\bsentences?\b"],
        {"num_sentences": 3, "relation": "less than"})
_ifeval("length_constraints:number_paragraphs", "structure",
        ["There should be {num_paragraphs} paragraphs, separated from each other by the markdown divider ***.",
         "Write exactly {num_paragraphs} paragraphs and put *** between them."],
        [Param("num_paragraphs", "int", minimum=1)], [r"\bparagraphs?\b.*\*\*\*|\*\*\*.*\bparagraphs?\b"],
        {"num_paragraphs": 2})
_ifeval("length_constraints:number_words", "length",
        ["Answer with {relation} {num_words} words.", "Your response should contain {relation} {num_words} words.",
         "Keep the reply to {relation} {num_words} words."],
        [Param("num_words", "int", minimum=0), REL], [rf"\b{N}\s+words\b", r"\bword (count|limit)\b"],
        {"num_words": 100, "relation": "less than"})
_ifeval("length_constraints:nth_paragraph_first_word", "structure",
        ["Write {num_paragraphs} paragraphs separated by blank lines; paragraph {nth_paragraph} must start with the "
         "word {first_word}.",
         "Use {num_paragraphs} paragraphs (blank lines between them) and begin paragraph {nth_paragraph} with "
         "\"{first_word}\"."],
        [Param("num_paragraphs", "int", minimum=1), Param("nth_paragraph", "int", minimum=1), Param("first_word", "str")],
        [r"\bparagraph\b.*\b(start|begin)s?\b.*\bword\b", r"\b(start|begin)\b.*\bparagraph\b"],
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"})
_ifeval("detectable_content:number_placeholders", "content",
        ["The response must contain at least {num_placeholders} placeholders in square brackets, such as [address].",
         "Include at least {num_placeholders} placeholders like [name]."],
        [Param("num_placeholders", "int", minimum=0)], [r"\bplaceholders?\b"], {"num_placeholders": 2})
_ifeval("detectable_content:postscript", "content",
        ["At the end of your response, please explicitly add a postscript starting with {postscript_marker}",
         "Finish with a postscript that begins with {postscript_marker}"],
        [Param("postscript_marker", "str")], [r"\bpostscript\b", r"\bp\.\s?s\b"], {"postscript_marker": "P.S."})
_ifeval("detectable_format:number_bullet_lists", "format",
        ["Your answer must contain exactly {num_bullets} bullet points in markdown, such as: * point.",
         "Use exactly {num_bullets} markdown bullet points."],
        [Param("num_bullets", "int", minimum=0)], [r"\bbullet"], {"num_bullets": 3})
_ifeval("detectable_format:constrained_response", "format",
        ["Answer with one of the following options: My answer is yes., My answer is no., My answer is maybe.",
         "Reply with exactly one of: 'My answer is yes.', 'My answer is no.' or 'My answer is maybe.'"],
        [], [r"\bmy answer is\b"], {})
_ifeval("detectable_format:number_highlighted_sections", "format",
        ["Highlight at least {num_highlights} sections in your answer with markdown, i.e. *highlighted section*.",
         "Mark at least {num_highlights} parts in *italic* markdown highlights."],
        [Param("num_highlights", "int", minimum=0)], [r"\bhighlight"], {"num_highlights": 2})
_ifeval("detectable_format:multiple_sections", "structure",
        ["Your response must have {num_sections} sections. Mark the beginning of each section with {section_spliter} X.",
         "Split the answer into {num_sections} sections, each starting with '{section_spliter} N'."],
        [Param("section_spliter", "str"), Param("num_sections", "int", minimum=1)], [r"\bsections?\b.*\b(mark|start|begin)"],
        {"section_spliter": "SECTION", "num_sections": 2})
_ifeval("detectable_format:json_format", "format",
        ["Entire output should be wrapped in JSON format.", "Answer with one JSON object and nothing else.",
         "Format the whole reply as JSON."],
        [], [r"\bjson\b"], {})
_ifeval("detectable_format:title", "format",
        ["Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
         "Give the reply a title in double angular brackets, like <<title>>."],
        [], [r"\btitle\b"], {})
_ifeval("combination:two_responses", "combination",
        ["Give two different responses. Responses and only responses should be separated by 6 asterisk symbols: ******.",
         "Write two different answers separated by ******."],
        [], [r"\btwo (different )?(responses|answers)\b"], {})
_ifeval("combination:repeat_prompt", "combination",
        ["First repeat the request word for word without change, then give your answer: {prompt_to_repeat}",
         "Begin by repeating this request exactly: {prompt_to_repeat}"],
        [Param("prompt_to_repeat", "str")], [r"\brepeat\w*\b.*\b(request|question|prompt)\b"],
        {"prompt_to_repeat": "Write a poem."})
_ifeval("startend:end_checker", "startend",
        ["Finish your response with this exact phrase: {end_phrase}. No other words should follow it.",
         "End your reply with the phrase \"{end_phrase}\"."],
        [Param("end_phrase", "str")], [r"\b(end|finish|conclude|close)\w*\b.*\b(with|phrase)\b"], {"end_phrase": "Any other questions?"})
_ifeval("startend:quotation", "startend",
        ["Wrap your entire response with double quotation marks.", "Put the whole answer inside double quotes."],
        [], [r"\bquot(ation|es?)\b"], {})
_ifeval("change_case:capital_word_frequency", "case",
        ["In your response, words with all capital letters should appear {capital_relation} {capital_frequency} times.",
         "Use {capital_relation} {capital_frequency} words written in ALL CAPITALS."],
        [Param("capital_frequency", "int", minimum=0), Param("capital_relation", "choice", RELATIONS)],
        [r"\bcapital\w*\b.*\btimes\b|\ball capitals\b.*\bwords?\b|\bwords?\b.*\ball capitals\b"],
        {"capital_frequency": 2, "capital_relation": "at least"})
_ifeval("change_case:english_capital", "case",
        ["Your entire response should be in English, and in all capital letters.",
         "Reply in English using only CAPITAL LETTERS."],
        [], [r"\b(all |only )?capital letters\b|\buppercase\b|\bupper case\b|\ball caps\b"], {})
_ifeval("change_case:english_lowercase", "case",
        ["Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
         "Write in English with lowercase letters only."],
        [], [r"\blower ?case\b", r"\bno capital letters\b"], {})
_ifeval("punctuation:no_comma", "punctuation",
        ["In your entire response, refrain from the use of any commas.", "Do not use a single comma in your answer."],
        [], [r"\bcommas?\b"], {})
